//! `net.unblock_ip`: removes an address or network from the daemon's nftables sets (see
//! [`super::nft`]). Undo: `net.block_ip`. Removing an element that is not there succeeds.

use std::sync::Arc;

use serde_json::Value;

use super::nft::Nft;
use super::{Action, ActionContext, ActionFuture, ActionSpec, params};

pub struct NetUnblockIp {
    nft: Arc<Nft>,
}

impl NetUnblockIp {
    pub fn new(nft: Arc<Nft>) -> NetUnblockIp {
        NetUnblockIp { nft }
    }
}

impl Action for NetUnblockIp {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NET_UNBLOCK_IP
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let address = params::string(params, "address")?;
            self.nft.unblock(address, ctx).await
        })
    }
}
