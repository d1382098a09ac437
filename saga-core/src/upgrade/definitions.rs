//! The saga definitions of one build, as the upgrade check compares them with a store: no code
//! to run, no clients, no orchestrator.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize as _, Serialize, Serializer};
use serde_json::Value;

use crate::id::{SagaType, StepName};
use crate::saga::{ErasedSaga, Saga};

/// Whether a stored input decodes as a definition's input type (why not, when it does not).
type DecodeFn = Arc<dyn Fn(&Value) -> std::result::Result<(), String> + Send + Sync>;

/// One registered version of a saga type, as the upgrade check sees it: its name, version,
/// fingerprint, step names in order, and whether a stored input decodes as its input type.
#[derive(Clone, Serialize)]
pub struct Definition {
    saga_type: SagaType,
    version: u32,
    fingerprint: String,
    steps: Vec<StepName>,
    #[serde(skip)]
    decode: DecodeFn,
}

impl Definition {
    /// The definition of `S`, read from [`Saga::definition`] (no value of `S` is needed).
    pub(crate) fn of<S: Saga>() -> Self {
        let definition = S::definition();
        Self {
            saga_type: definition.name().clone(),
            version: definition.version(),
            fingerprint: definition.fingerprint(),
            steps: definition
                .specs()
                .into_iter()
                .map(|spec| spec.name)
                .collect(),
            decode: Arc::new(|input: &Value| {
                S::Input::deserialize(input)
                    .map(drop)
                    .map_err(|err| err.to_string())
            }),
        }
    }

    /// The definition a registered saga runs on.
    pub(crate) fn of_registered(registered: &Arc<dyn ErasedSaga>) -> Self {
        let decoder = Arc::clone(registered);
        Self {
            saga_type: registered.saga_type().clone(),
            version: registered.version(),
            fingerprint: registered.fingerprint().to_owned(),
            steps: registered
                .specs()
                .iter()
                .map(|spec| spec.name.clone())
                .collect(),
            decode: Arc::new(move |input: &Value| decoder.decode_input(input).map(drop)),
        }
    }

    /// The saga type.
    pub fn saga_type(&self) -> &SagaType {
        &self.saga_type
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The fingerprint sagas started on this definition record.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The step names, in order (the index of each is its [`StepIndex`](crate::StepIndex)).
    pub fn steps(&self) -> &[StepName] {
        &self.steps
    }

    /// Whether a stored input decodes as this definition's input type.
    ///
    /// # Errors
    /// The decoding error, as text.
    pub fn decode_input(&self, input: &Value) -> std::result::Result<(), String> {
        (self.decode)(input)
    }
}

impl fmt::Debug for Definition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definition")
            .field("saga_type", &self.saga_type)
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// The saga definitions of the build about to ship: every version of every saga type it
/// registers. Build it from the saga types themselves, so that a deploy pipeline needs neither
/// an orchestrator nor the clients your sagas hold, or read it from a running orchestrator with
/// [`Orchestrator::definitions`](crate::Orchestrator::definitions).
///
/// ```
/// # use std::sync::Arc;
/// # use saga_core::{Saga, SagaDefinition, SagaType, Step, StepContext, StepError};
/// use saga_core::upgrade::Definitions;
/// # struct CheckoutV1;
/// # struct CheckoutV2;
/// # async fn reserve<S>(_: Arc<S>, _: StepContext<u32>) -> Result<(), StepError> { Ok(()) }
/// # impl Saga for CheckoutV1 {
/// #     type Input = u32;
/// #     fn definition() -> SagaDefinition<Self> {
/// #         SagaDefinition::new("checkout", 1).step(Step::new("reserve_stock", reserve).irreversible())
/// #     }
/// # }
/// # impl Saga for CheckoutV2 {
/// #     type Input = u32;
/// #     fn definition() -> SagaDefinition<Self> {
/// #         SagaDefinition::new("checkout", 2).step(Step::new("reserve_stock", reserve).irreversible())
/// #     }
/// # }
/// // Every version the new build registers: v1 stays until its sagas finish.
/// let definitions = Definitions::new().with::<CheckoutV1>().with::<CheckoutV2>();
/// assert_eq!(definitions.versions(&SagaType::new("checkout")), vec![1, 2]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    by_version: BTreeMap<(SagaType, u32), Definition>,
}

impl Definitions {
    /// No definitions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the definition of `S`; a later definition of the same type and version replaces an
    /// earlier one, as [`Orchestrator::register`](crate::Orchestrator::register) does.
    pub fn with<S: Saga>(mut self) -> Self {
        self.add(Definition::of::<S>());
        self
    }

    /// Adds a definition, replacing one of the same type and version.
    fn add(&mut self, definition: Definition) {
        self.by_version.insert(
            (definition.saga_type.clone(), definition.version),
            definition,
        );
    }

    /// The definition of `saga_type` at `version`, if registered.
    pub fn get(&self, saga_type: &SagaType, version: u32) -> Option<&Definition> {
        self.by_version.get(&(saga_type.clone(), version))
    }

    /// The registered versions of `saga_type`, ascending (empty: the type is not registered).
    pub fn versions(&self, saga_type: &SagaType) -> Vec<u32> {
        self.by_version
            .keys()
            .filter(|(name, _)| name == saga_type)
            .map(|(_, version)| *version)
            .collect()
    }

    /// Every definition, by type then version.
    pub fn iter(&self) -> impl Iterator<Item = &Definition> {
        self.by_version.values()
    }

    /// How many (type, version) pairs are registered.
    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

impl Definitions {
    /// The definitions of sagas registered with an orchestrator.
    pub(crate) fn of_registered<'a>(
        registered: impl Iterator<Item = &'a Arc<dyn ErasedSaga>>,
    ) -> Self {
        let mut definitions = Self::new();
        for saga in registered {
            definitions.add(Definition::of_registered(saga));
        }
        definitions
    }
}

/// Serialized as a list, by type then version.
impl Serialize for Definitions {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> std::result::Result<Z::Ok, Z::Error> {
        serializer.collect_seq(self.by_version.values())
    }
}
