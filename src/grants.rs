//! TEMPORARY stub with the API the grants branch provides; replaced on merge.
#[derive(Debug, thiserror::Error)]
#[error("grant error: {0}")]
pub struct GrantError(pub String);
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSet { pub grants: Vec<String> }
impl GrantSet {
    pub fn from_toml_str(s: &str) -> Result<Self, GrantError> { Ok(Self { grants: vec![s.to_owned()] }) }
    pub fn to_toml_string(&self) -> String { self.grants.join("") }
    pub fn to_der(&self) -> Result<Vec<u8>, GrantError> { use der::Encode; der::asn1::OctetString::new(self.to_toml_string().into_bytes()).and_then(|o| o.to_der()).map_err(|e| GrantError(e.to_string())) }
    pub fn from_der(b: &[u8]) -> Result<Self, GrantError> { use der::Decode; let o = der::asn1::OctetString::from_der(b).map_err(|e| GrantError(e.to_string()))?; Ok(Self{grants: vec![String::from_utf8_lossy(o.as_bytes()).into_owned()]}) }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind { Agent, Approver, Executor, Broker }
impl std::str::FromStr for RoleKind { type Err = GrantError; fn from_str(s: &str) -> Result<Self, GrantError> { match s { "agent" => Ok(Self::Agent), "approver" => Ok(Self::Approver), "executor" => Ok(Self::Executor), "broker" => Ok(Self::Broker), _ => Err(GrantError(s.into())) } } }
impl std::fmt::Display for RoleKind { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}", format!("{self:?}").to_lowercase()) } }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role { pub kind: RoleKind, pub groups: Vec<String> }
impl Role {
    pub fn to_der(&self) -> Result<Vec<u8>, GrantError> { use der::Encode; der::asn1::Utf8StringRef::new(&self.kind.to_string()).and_then(|u| u.to_der()).map_err(|e| GrantError(e.to_string())) }
    pub fn from_der(b: &[u8]) -> Result<Self, GrantError> { use der::Decode; let u = der::asn1::Utf8StringRef::from_der(b).map_err(|e| GrantError(e.to_string()))?; Ok(Role { kind: u.as_str().parse()?, groups: vec![] }) }
}
