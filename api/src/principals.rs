//! Who may call the operator endpoints: principals with roles, read from a principals file
//! whose bearer tokens are stored only as SHA-256 hashes, and what each role may touch.
//!
//! A principal's scope is checked here and only here. Acting on an object outside one's scope
//! answers exactly as the object's absence would (`404`), and an action the role never has
//! answers `403 forbidden` before any object is looked up, so neither reveals what exists.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use miqat_engine::catalog::{CaravanIdx, Catalog, ProvinceIdx};
use miqat_engine::model::OperatorEvent;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The most principals a file may list: authentication compares a token's hash with every
/// entry, so the list must stay small.
pub const PRINCIPALS_MAX: usize = 4_096;
/// The most caravans one caravan manager may run.
pub const CARAVANS_PER_MANAGER_MAX: usize = 64;
/// The id of the principal that `MIQAT_OPERATOR_TOKEN` authenticates.
pub const OPERATOR_TOKEN_PRINCIPAL: &str = "operator-token";

/// What a principal is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Operator,
    /// Their caravans: the roster and `documents_received`.
    CaravanManager,
    /// Payment events (`first_payment_received`, `final_payment_received`) on any reservation.
    PaymentGateway,
    /// Medical events (`medical_approved`, `medical_rejected`) on any reservation.
    MedicalCentre,
    /// Receipt transfers and dispatch-city changes of their province.
    Office,
}

impl Role {
    /// The role's name in the principals file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::CaravanManager => "caravan_manager",
            Role::PaymentGateway => "payment_gateway",
            Role::MedicalCentre => "medical_centre",
            Role::Office => "office",
        }
    }

    /// The role named `text`, if and only if it is one.
    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Operator,
            Role::CaravanManager,
            Role::PaymentGateway,
            Role::MedicalCentre,
            Role::Office,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// One authenticated caller of the operator endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The principal's id, as logged with each of its actions.
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// A caravan manager's caravans (sorted); empty for every other role.
    pub caravans: Vec<CaravanIdx>,
    /// An office's province; `None` for every other role.
    pub province: Option<ProvinceIdx>,
}

impl Principal {
    /// True if and only if the principal may use the endpoints only an operator has
    /// (the export, the statistics, the schedule).
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// True if and only if the role may report `event` at all (on some reservation).
    pub fn may_report(&self, event: OperatorEvent) -> bool {
        use OperatorEvent as E;
        match self.role {
            Role::Operator => true,
            Role::CaravanManager => event == E::DocumentsReceived,
            Role::PaymentGateway => {
                matches!(event, E::FirstPaymentReceived | E::FinalPaymentReceived)
            }
            Role::MedicalCentre => matches!(event, E::MedicalApproved | E::MedicalRejected),
            Role::Office => false,
        }
    }

    /// True if and only if the principal may see and act on the reservations of `caravan`
    /// (an operator, or the caravan's manager). Gateways and medical centres act on any
    /// reservation by id but never list a caravan: see [`Principal::acts_on_any_reservation`].
    pub fn runs_caravan(&self, caravan: CaravanIdx) -> bool {
        match self.role {
            Role::Operator => true,
            Role::CaravanManager => self.caravans.binary_search(&caravan).is_ok(),
            _ => false,
        }
    }

    /// True if and only if the principal's events are not limited to some caravans.
    pub fn acts_on_any_reservation(&self) -> bool {
        matches!(
            self.role,
            Role::Operator | Role::PaymentGateway | Role::MedicalCentre
        )
    }

    /// True if and only if the principal may handle transfers and dispatch changes touching
    /// `province` (an operator, or an office of that province).
    pub fn serves_province(&self, province: ProvinceIdx) -> bool {
        match self.role {
            Role::Operator => true,
            Role::Office => self.province == Some(province),
            _ => false,
        }
    }

    /// True if and only if the role handles transfers and dispatch changes at all.
    pub fn handles_holders(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Office)
    }
}

/// The principals the server knows, each behind the SHA-256 of its token.
#[derive(Clone, Default)]
pub struct Principals {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

impl fmt::Debug for Principals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes: they are as good as the tokens to an offline guesser.
        f.debug_list()
            .entries(self.entries.iter().map(|(_, p)| (&p.id, p.role.as_str())))
            .finish()
    }
}

/// The principals file as written: `[[principal]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    id: String,
    role: String,
    token_sha256: String,
    #[serde(default)]
    caravans: Vec<String>,
    province: Option<u32>,
}

impl Principals {
    /// No principal at all: every operator endpoint answers 401.
    pub fn none() -> Principals {
        Principals::default()
    }

    /// How many principals are known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if and only if no principal is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// These principals plus an operator authenticated by `token` (the single
    /// `MIQAT_OPERATOR_TOKEN`), named [`OPERATOR_TOKEN_PRINCIPAL`]. An empty token adds nothing.
    pub fn with_operator_token(mut self, token: &str) -> Principals {
        if !token.is_empty() {
            self.entries.push((
                sha256(token.as_bytes()),
                Arc::new(Principal {
                    id: OPERATOR_TOKEN_PRINCIPAL.to_owned(),
                    role: Role::Operator,
                    caravans: Vec::new(),
                    province: None,
                }),
            ));
        }
        self
    }

    /// Reads the principals file at `path`, resolving caravan and province ids in `catalog`.
    /// Returns an error naming the file, the entry and the field if anything is wrong.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Principals, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Principals::parse(&text, catalog).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a principals file's text (see `docs/roles.md`); an error names the entry
    /// (1-based) and the field.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Principals, String> {
        let file: PrincipalsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.principal.len() > PRINCIPALS_MAX {
            return Err(format!(
                "{} principals; at most {PRINCIPALS_MAX}",
                file.principal.len()
            ));
        }
        let mut principals = Principals::none();
        for (i, entry) in file.principal.iter().enumerate() {
            let at = |field: &str, why: String| format!("principal {} ({field}): {why}", i + 1);
            let (hash, principal) = resolve(entry, catalog).map_err(|(f, why)| at(f, why))?;
            if principals.entries.iter().any(|(_, p)| p.id == principal.id) {
                return Err(at("id", format!("{:?} is listed twice", principal.id)));
            }
            if principals.entries.iter().any(|(h, _)| *h == hash) {
                return Err(at(
                    "token_sha256",
                    "another principal has this token".into(),
                ));
            }
            principals.entries.push((hash, Arc::new(principal)));
        }
        Ok(principals)
    }

    /// The principal whose token is `token`, if any. Every entry is compared, each in
    /// constant time, so the time taken does not depend on which entry matched or how much of
    /// a hash did.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        if token.is_empty() {
            return None;
        }
        let given = sha256(token.as_bytes());
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(&given)) {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// One file entry checked and resolved, or the field at fault and why.
fn resolve(
    entry: &PrincipalEntry,
    catalog: &Catalog,
) -> Result<([u8; 32], Principal), (&'static str, String)> {
    let id = entry.id.trim();
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(("id", "1 to 128 printable characters".into()));
    }
    let role = Role::parse(entry.role.trim()).ok_or_else(|| {
        (
            "role",
            format!(
                "{:?} is not one of operator, caravan_manager, payment_gateway, \
                 medical_centre, office",
                entry.role
            ),
        )
    })?;
    let hash = parse_hex_32(entry.token_sha256.trim())
        .ok_or_else(|| ("token_sha256", "64 hexadecimal digits expected".into()))?;
    let mut caravans = Vec::with_capacity(entry.caravans.len());
    for caravan_id in &entry.caravans {
        caravans.push(
            catalog
                .caravan_by_id(caravan_id.trim())
                .ok_or_else(|| ("caravans", format!("unknown caravan {caravan_id:?}")))?,
        );
    }
    caravans.sort_unstable();
    caravans.dedup();
    let province = match entry.province {
        None => None,
        Some(id) => Some(
            catalog
                .province_by_id(id)
                .ok_or_else(|| ("province", format!("unknown province {id}")))?,
        ),
    };
    match role {
        Role::CaravanManager if caravans.is_empty() => {
            return Err(("caravans", "a caravan manager runs at least one".into()));
        }
        Role::CaravanManager if caravans.len() > CARAVANS_PER_MANAGER_MAX => {
            return Err((
                "caravans",
                format!("at most {CARAVANS_PER_MANAGER_MAX} per manager"),
            ));
        }
        Role::Office if province.is_none() => {
            return Err(("province", "an office serves one province".into()));
        }
        _ => {}
    }
    if role != Role::CaravanManager && !caravans.is_empty() {
        return Err(("caravans", "only a caravan manager runs caravans".into()));
    }
    if role != Role::Office && province.is_some() {
        return Err(("province", "only an office serves a province".into()));
    }
    Ok((
        hash,
        Principal {
            id: id.to_owned(),
            role,
            caravans,
            province,
        },
    ))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The hex SHA-256 of `token` as a principals file stores it (`miqat principals hash`).
pub fn token_sha256_hex(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 bytes from 64 hexadecimal digits (a SHA-256 digest, an HMAC key), `None` otherwise.
pub(crate) fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_of_a_known_token_matches_the_sha256_test_vector() {
        // FIPS 180-2's example "abc".
        assert_eq!(
            token_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex_32(&token_sha256_hex("abc")), Some(sha256(b"abc")));
        for bad in ["", "zz", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            assert_eq!(parse_hex_32(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_operator_token_authenticates_an_operator_and_nothing_else_does() {
        let principals = Principals::none().with_operator_token("s3cret");
        let p = principals.authenticate("s3cret").expect("the token");
        assert_eq!(p.role, Role::Operator);
        assert_eq!(p.id, OPERATOR_TOKEN_PRINCIPAL);
        for wrong in ["", "s3cre", "s3cret ", "S3CRET"] {
            assert!(principals.authenticate(wrong).is_none(), "{wrong:?}");
        }
        assert!(Principals::none().with_operator_token("").is_empty());
    }
}
