//! `wasi:http` for agents: every outgoing request of an invocation goes to
//! [`Gate::http`], which checks, sends and audits it. Nothing here decides.

use super::state::InvocationState;
use crate::gate::{Caller, Gate};
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The hooks of one invocation: its caller, and the gate to send through.
pub(crate) struct Outbound {
    pub(crate) gate: Arc<Gate>,
    pub(crate) caller: Arc<Caller>,
}

impl WasiHttpHooks for Outbound {
    /// The gate sets `Host` from the target as checked, not from the
    /// agent's spelling of it.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        Box::new(self.gate.clone().http(self.caller.clone(), request, options))
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}
