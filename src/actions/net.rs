//! `net.block_ip` asks the actuator to add an address or network to its nftables set (see
//! [`crate::actuator::nft`]), optionally with a timeout; adding an element already present
//! succeeds. `net.unblock_ip`, its undo and inverse, asks it to remove one; removing an element
//! that is not there succeeds. Loopback, unspecified and `never_block` addresses are refused
//! here and again by the actuator, for both: the two read their parameters the same way.

use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use super::{ActionError, params};
use crate::actuator::nft;
use crate::actuator::protocol::{BlockRequest, Request, UnblockRequest};

/// The parameters of `net.block_ip` and `net.unblock_ip`, read and checked once for both.
struct NetParams {
    /// `address`, parsed strictly and checked against loopback, unspecified and `never_block`.
    net: IpNet,
    /// `timeout` (`10m`, `1h`, …) in whole seconds, rounded up; `net.unblock_ip` takes none.
    timeout_seconds: Option<u64>,
}

impl NetParams {
    fn read(params: &Value, never_block: &[IpNet]) -> Result<NetParams, ActionError> {
        let address = params::string(params, "address")?;
        let net = nft::parse_target(address).map_err(ActionError::Permanent)?;
        nft::check_target(&net, never_block).map_err(ActionError::Permanent)?;
        let timeout_seconds = params::optional_string(params, "timeout")?
            .map(|text| {
                crate::registry::model::DurationSpec::parse(text)
                    .map(|spec| whole_seconds(spec.0))
                    .map_err(|e| ActionError::Permanent(format!("parameter `timeout`: {e}")))
            })
            .transpose()?;
        Ok(NetParams {
            net,
            timeout_seconds,
        })
    }
}

/// `net.block_ip`'s request.
pub fn block_request(params: &Value, never_block: &[IpNet]) -> Result<Request, ActionError> {
    let NetParams {
        net,
        timeout_seconds,
    } = NetParams::read(params, never_block)?;
    Ok(Request::Block(BlockRequest {
        net,
        timeout_seconds,
    }))
}

/// `net.unblock_ip`'s request.
pub fn unblock_request(params: &Value, never_block: &[IpNet]) -> Result<Request, ActionError> {
    let NetParams { net, .. } = NetParams::read(params, never_block)?;
    Ok(Request::Unblock(UnblockRequest { net }))
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs().max(1) + u64::from(duration.subsec_nanos() > 0)
}
