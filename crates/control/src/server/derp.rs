//! placeholder
pub struct Relay;
impl Relay { pub async fn shutdown(self) {} }
pub async fn start(_s: &crate::config::Settings, _k: &crate::model::ServerKeys) -> Result<Option<Relay>, super::ServerError> { Ok(None) }
pub fn derp_map(_s: &crate::config::Settings, _r: Option<&Relay>) -> Result<proto::tailcfg::DerpMap, super::ServerError> { Ok(Default::default()) }
