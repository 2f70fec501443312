//! The stdio transport, with one addition: inbox messages returned by a tool
//! call are acknowledged right after the call's result has been written to
//! the client, and handed back for redelivery when writing it failed. A
//! result never written leaves them held, and they are handed back when the
//! bridge stops.

use crate::inbox::Settlements;
use rmcp::RoleServer;
use rmcp::model::JsonRpcMessage;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use std::future::Future;

/// Wraps `inner` (the stdio transport) to settle inbox reads.
#[derive(Debug)]
pub(crate) struct SettlingTransport<T> {
    inner: T,
    settlements: Settlements,
}

impl<T> SettlingTransport<T> {
    pub(crate) fn new(inner: T, settlements: Settlements) -> Self {
        Self { inner, settlements }
    }
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for SettlingTransport<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let answered = match &item {
            JsonRpcMessage::Response(response) => Some(response.id.clone()),
            JsonRpcMessage::Error(error) => error.id.clone(),
            _ => None,
        };
        let sent = self.inner.send(item);
        let settlements = self.settlements.clone();
        async move {
            let result = sent.await;
            if let Some(id) = answered {
                settlements.settle(&id, result.is_ok());
            }
            result
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleServer>>> + Send {
        self.inner.receive()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
