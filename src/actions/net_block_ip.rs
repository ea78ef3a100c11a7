//! `net.block_ip`: asks the actuator to add an address or network to its nftables set (see
//! [`crate::actuator::nft`]), optionally with a timeout. Undo: `net.unblock_ip`. Adding an
//! element already present succeeds. Loopback, unspecified and `never_block` addresses are
//! refused here and again by the actuator.

use serde_json::{Value, json};

use super::actuator_client::{ActuatorClient, unexpected};
use super::{Action, ActionContext, ActionFuture, ActionSpec, net};
use crate::actuator::protocol::{BlockRequest, Reply, Request};

/// `net.block_ip`, a client of the actuator.
pub struct NetBlockIp {
    actuator: ActuatorClient,
    never_block: Vec<ipnet::IpNet>,
}

impl NetBlockIp {
    /// Checks against `never_block` first, then asks `actuator`.
    pub fn new(actuator: ActuatorClient, never_block: Vec<ipnet::IpNet>) -> NetBlockIp {
        NetBlockIp {
            actuator,
            never_block,
        }
    }
}

impl Action for NetBlockIp {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NET_BLOCK_IP
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let net = net::target(params, &self.never_block)?;
            let timeout_seconds = net::timeout_seconds(params)?;
            let request = Request::Block(BlockRequest {
                net,
                timeout_seconds,
            });
            match self.actuator.call(&request, ctx).await? {
                Reply::Blocked {
                    net,
                    set,
                    timeout_seconds,
                } => Ok(super::ActionOutput::new(json!({
                    "address": net.to_string(),
                    "set": set,
                    "timeout_seconds": timeout_seconds,
                }))),
                other => Err(unexpected("block", &other)),
            }
        })
    }
}
