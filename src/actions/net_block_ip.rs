//! `net.block_ip`: adds an address or network to the daemon's nftables sets (see [`super::nft`]),
//! optionally with a timeout. Undo: `net.unblock_ip`. Adding an element already present succeeds.

use std::sync::Arc;

use serde_json::Value;

use super::nft::{self, Nft};
use super::{Action, ActionContext, ActionFuture, ActionSpec, params};

pub struct NetBlockIp {
    nft: Arc<Nft>,
}

impl NetBlockIp {
    pub fn new(nft: Arc<Nft>) -> NetBlockIp {
        NetBlockIp { nft }
    }
}

impl Action for NetBlockIp {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NET_BLOCK_IP
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let address = params::string(params, "address")?;
            let timeout = nft::timeout_param(params)?;
            self.nft.block(address, timeout, ctx).await
        })
    }
}
