//! One convention for every enum a store keeps as text: `ALL`, `as_str`, `Display` (the
//! persisted form) and `FromStr` (failing with [`UnknownValue`]), written once by [`persisted!`].

/// A persisted text that names no known value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownValue {
    /// What was being parsed (for example `saga status`).
    pub kind: &'static str,
    /// The text found.
    pub value: String,
}

/// Implements the persisted form of an enum from one list of its variants and their texts, in
/// the order `ALL` gives them.
macro_rules! persisted {
    ($name:ident, $what:literal, [$($variant:ident => $text:literal),+ $(,)?]) => {
        impl $name {
            /// Every value.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The persisted form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::persisted::UnknownValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::persisted::UnknownValue {
                        kind: $what,
                        value: text.to_owned(),
                    }),
                }
            }
        }
    };
}

pub(crate) use persisted;
