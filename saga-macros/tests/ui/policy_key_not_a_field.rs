use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Contact {
    customer: String,
}

// A misspelt field and a key function with the wrong signature are reported on the token.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = Contact)]
#[step(send_email, irreversible, cap(name = "email", key = customr, max = 1, per = "24h"))]
#[step(retry_contact, irreversible, retry_budget(name = "contact", key_fn = customer_id, max = 5, per = "1h"))]
struct Outreach;

fn customer_id(contact: &Contact) -> u64 {
    contact.customer.len() as u64
}

async fn send_email(_: Arc<Outreach>, _: StepContext<Contact>) -> Result<(), StepError> {
    Ok(())
}

async fn retry_contact(_: Arc<Outreach>, _: StepContext<Contact>) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
