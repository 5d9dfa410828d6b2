//! Keys of celery-janitor's own that front ends share across instances through the broker's
//! Redis: a claim taken once (`SET NX PX`: the metrics refresher's lease, a schedule slot), a
//! value every instance reads (the cached metrics figures). Every key is under the broker's prefix and `celery-janitor:`.

use std::time::Duration;

use crate::error::Result;
use crate::janitor::Janitor;
use crate::OWN_KEY_PREFIX;

impl Janitor {
    /// The full Redis key of celery-janitor's own key `name` (`celery-janitor:<name>`, after
    /// the broker's prefix).
    pub fn shared_key(&self, name: &str) -> Vec<u8> {
        [
            self.settings.broker_prefix.as_slice(),
            OWN_KEY_PREFIX.as_bytes(),
            name.as_bytes(),
        ]
        .concat()
    }

    /// Takes the claim `name` for `ttl` with `value` (`SET NX PX`): true when this call took it,
    /// false when someone holds it.
    pub async fn claim(&self, name: &str, value: &str, ttl: Duration) -> Result<bool> {
        let mut con = self.broker.con.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.shared_key(name))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut con)
            .await?;
        Ok(set.is_some())
    }

    /// Deletes the claim `name` if it still holds `value` (compare and delete, one script).
    pub async fn release_claim(&self, name: &str, value: &str) -> Result<()> {
        let mut con = self.broker.con.clone();
        redis::Script::new(include_str!("../lua/release_claim.lua"))
            .key(self.shared_key(name))
            .arg(value)
            .invoke_async::<i64>(&mut con)
            .await?;
        Ok(())
    }

    /// Stores `value` under `name`, for every instance to read.
    pub async fn put_shared(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut con = self.broker.con.clone();
        redis::cmd("SET")
            .arg(self.shared_key(name))
            .arg(value)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// The value stored under `name`, if any.
    pub async fn get_shared(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut con = self.broker.con.clone();
        Ok(redis::cmd("GET")
            .arg(self.shared_key(name))
            .query_async(&mut con)
            .await?)
    }
}
