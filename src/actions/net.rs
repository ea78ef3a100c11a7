//! Parameters shared by `net.block_ip` and `net.unblock_ip`.

use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use super::{ActionError, params};
use crate::actuator::nft;

/// The `address` parameter, parsed strictly and checked against loopback, unspecified and
/// `never_block` (the actuator checks again with its own list).
pub fn target(params: &Value, never_block: &[IpNet]) -> Result<IpNet, ActionError> {
    let address = params::string(params, "address")?;
    let target = nft::parse_target(address).map_err(ActionError::Permanent)?;
    nft::check_target(&target, never_block).map_err(ActionError::Permanent)?;
    Ok(target)
}

/// The optional `timeout` parameter (`10m`, `1h`, …) in whole seconds, rounded up.
pub fn timeout_seconds(params: &Value) -> Result<Option<u64>, ActionError> {
    params::optional_string(params, "timeout")?
        .map(|text| {
            crate::registry::model::DurationSpec::parse(text)
                .map(|spec| whole_seconds(spec.0))
                .map_err(|e| ActionError::Permanent(format!("parameter `timeout`: {e}")))
        })
        .transpose()
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs().max(1) + u64::from(duration.subsec_nanos() > 0)
}
