//! `net.unblock_ip`: asks the actuator to remove an address or network from its nftables set
//! (see [`crate::actuator::nft`]). Undo: `net.block_ip`. Removing an element that is not there
//! succeeds.

use serde_json::{Value, json};

use super::actuator_client::{ActuatorClient, unexpected};
use super::{Action, ActionContext, ActionFuture, ActionSpec, net};
use crate::actuator::protocol::{Reply, Request, UnblockRequest};

/// `net.unblock_ip`, a client of the actuator.
pub struct NetUnblockIp {
    actuator: ActuatorClient,
    never_block: Vec<ipnet::IpNet>,
}

impl NetUnblockIp {
    /// Checks the address first, then asks `actuator`.
    pub fn new(actuator: ActuatorClient, never_block: Vec<ipnet::IpNet>) -> NetUnblockIp {
        NetUnblockIp {
            actuator,
            never_block,
        }
    }
}

impl Action for NetUnblockIp {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NET_UNBLOCK_IP
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let net = net::target(params, &self.never_block)?;
            let request = Request::Unblock(UnblockRequest { net });
            match self.actuator.call(&request, ctx).await? {
                Reply::Unblocked {
                    net,
                    set,
                    was_blocked,
                } => Ok(super::ActionOutput::new(json!({
                    "address": net.to_string(),
                    "set": set,
                    "was_blocked": was_blocked,
                }))),
                other => Err(unexpected("unblock", &other)),
            }
        })
    }
}
