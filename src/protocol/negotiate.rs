//! Option negotiation: turning what the filter needs into the OPTNEG reply, and answering
//! "will the MTA wait for a reply to this command?" afterwards.
//!
//! What MTAs offer in their OPTNEG (checked against their sources):
//! * Postfix 3.x (`milter8.c`, `milter_protocol = 6`, the default since 2.6): version 6,
//!   actions `0x1ff` (all `SMFIF_*`), protocol `0x1fffff`: every `SMFIP_NO*`, every
//!   `SMFIP_NR_*`, `SKIP`, `RCPT_REJ` and `HDR_LEADSPC`. With `milter_protocol = 2..4` it
//!   offers only the `NO*` bits of that version and no `NR_*` bits.
//! * sendmail 8.14+ (`milter.c`): version 6, actions `SMFI_CURR_ACTS` (`0x1ff`), protocol
//!   `SMFI_CURR_PROT` (`0x1fffff`), plus `SMFIP_MDS_256K`/`SMFIP_MDS_1M` when the MTA was
//!   built with `_FFR_MDS_NEGOTIATE` and a larger `Milter.maxdatasize` is configured.
//!
//! Both MTAs drop the filter when its reply sets an action or protocol bit they did not
//! offer, which is why every bit here is masked with the offer.

use bytes::Bytes;

use super::command::*;
use super::reply::Reply;
use super::MILTER_VERSION;

/// `SMFIF_*` (actions), `SMFIP_*` (protocol) and `SMFIM_*` (macro stages), from mfdef.h.
pub mod flags {
    pub const SMFIF_NONE: u32 = 0;
    pub const SMFIF_ADDHDRS: u32 = 1 << 0;
    pub const SMFIF_CHGBODY: u32 = 1 << 1;
    pub const SMFIF_MODBODY: u32 = SMFIF_CHGBODY;
    pub const SMFIF_ADDRCPT: u32 = 1 << 2;
    pub const SMFIF_DELRCPT: u32 = 1 << 3;
    pub const SMFIF_CHGHDRS: u32 = 1 << 4;
    pub const SMFIF_QUARANTINE: u32 = 1 << 5;
    pub const SMFIF_CHGFROM: u32 = 1 << 6;
    pub const SMFIF_ADDRCPT_PAR: u32 = 1 << 7;
    pub const SMFIF_SETSYMLIST: u32 = 1 << 8;
    /// All actions defined for protocol version 6 (`SMFI_CURR_ACTS`).
    pub const SMFI_CURR_ACTS: u32 = 0x1ff;

    pub const SMFIP_NOCONNECT: u32 = 1 << 0;
    pub const SMFIP_NOHELO: u32 = 1 << 1;
    pub const SMFIP_NOMAIL: u32 = 1 << 2;
    pub const SMFIP_NORCPT: u32 = 1 << 3;
    pub const SMFIP_NOBODY: u32 = 1 << 4;
    pub const SMFIP_NOHDRS: u32 = 1 << 5;
    pub const SMFIP_NOEOH: u32 = 1 << 6;
    pub const SMFIP_NR_HDR: u32 = 1 << 7;
    pub const SMFIP_NOHREPL: u32 = SMFIP_NR_HDR;
    pub const SMFIP_NOUNKNOWN: u32 = 1 << 8;
    pub const SMFIP_NODATA: u32 = 1 << 9;
    pub const SMFIP_SKIP: u32 = 1 << 10;
    pub const SMFIP_RCPT_REJ: u32 = 1 << 11;
    pub const SMFIP_NR_CONN: u32 = 1 << 12;
    pub const SMFIP_NR_HELO: u32 = 1 << 13;
    pub const SMFIP_NR_MAIL: u32 = 1 << 14;
    pub const SMFIP_NR_RCPT: u32 = 1 << 15;
    pub const SMFIP_NR_DATA: u32 = 1 << 16;
    pub const SMFIP_NR_UNKN: u32 = 1 << 17;
    pub const SMFIP_NR_EOH: u32 = 1 << 18;
    pub const SMFIP_NR_BODY: u32 = 1 << 19;
    pub const SMFIP_HDR_LEADSPC: u32 = 1 << 20;
    pub const SMFIP_MDS_256K: u32 = 1 << 28;
    pub const SMFIP_MDS_1M: u32 = 1 << 29;
    /// All protocol bits defined for version 6 (`SMFI_CURR_PROT`).
    pub const SMFI_CURR_PROT: u32 = 0x1f_ffff;
    pub const SMFIP_NOSEND_MASK: u32 = SMFIP_NOCONNECT
        | SMFIP_NOHELO
        | SMFIP_NOMAIL
        | SMFIP_NORCPT
        | SMFIP_NOBODY
        | SMFIP_NOHDRS
        | SMFIP_NOEOH
        | SMFIP_NOUNKNOWN
        | SMFIP_NODATA;
    pub const SMFIP_NOREPLY_MASK: u32 = SMFIP_NR_CONN
        | SMFIP_NR_HELO
        | SMFIP_NR_MAIL
        | SMFIP_NR_RCPT
        | SMFIP_NR_DATA
        | SMFIP_NR_UNKN
        | SMFIP_NR_HDR
        | SMFIP_NR_EOH
        | SMFIP_NR_BODY;

    pub const SMFIM_CONNECT: u32 = 0;
    pub const SMFIM_HELO: u32 = 1;
    pub const SMFIM_ENVFROM: u32 = 2;
    pub const SMFIM_ENVRCPT: u32 = 3;
    pub const SMFIM_DATA: u32 = 4;
    pub const SMFIM_EOM: u32 = 5;
    pub const SMFIM_EOH: u32 = 6;
}

use flags::*;

/// A set of optional protocol stages (commands the MTA can be told not to send).
/// EOM, ABORT, QUIT, MACRO and OPTNEG are not optional and have no member here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StageSet(u16);

/// Per stage: (member, command byte, "don't send" bit, "don't expect a reply" bit).
const STAGES: [(StageSet, u8, u32, u32); 9] = [
    (
        StageSet::CONNECT,
        SMFIC_CONNECT,
        SMFIP_NOCONNECT,
        SMFIP_NR_CONN,
    ),
    (StageSet::HELO, SMFIC_HELO, SMFIP_NOHELO, SMFIP_NR_HELO),
    (StageSet::MAIL, SMFIC_MAIL, SMFIP_NOMAIL, SMFIP_NR_MAIL),
    (StageSet::RCPT, SMFIC_RCPT, SMFIP_NORCPT, SMFIP_NR_RCPT),
    (StageSet::DATA, SMFIC_DATA, SMFIP_NODATA, SMFIP_NR_DATA),
    (StageSet::HEADER, SMFIC_HEADER, SMFIP_NOHDRS, SMFIP_NR_HDR),
    (StageSet::EOH, SMFIC_EOH, SMFIP_NOEOH, SMFIP_NR_EOH),
    (StageSet::BODY, SMFIC_BODY, SMFIP_NOBODY, SMFIP_NR_BODY),
    (
        StageSet::UNKNOWN,
        SMFIC_UNKNOWN,
        SMFIP_NOUNKNOWN,
        SMFIP_NR_UNKN,
    ),
];

impl StageSet {
    pub const EMPTY: StageSet = StageSet(0);
    pub const CONNECT: StageSet = StageSet(1 << 0);
    pub const HELO: StageSet = StageSet(1 << 1);
    pub const MAIL: StageSet = StageSet(1 << 2);
    pub const RCPT: StageSet = StageSet(1 << 3);
    pub const DATA: StageSet = StageSet(1 << 4);
    pub const HEADER: StageSet = StageSet(1 << 5);
    pub const EOH: StageSet = StageSet(1 << 6);
    pub const BODY: StageSet = StageSet(1 << 7);
    pub const UNKNOWN: StageSet = StageSet(1 << 8);
    pub const ALL: StageSet = StageSet((1 << 9) - 1);

    pub const fn union(self, other: StageSet) -> StageSet {
        StageSet(self.0 | other.0)
    }

    pub const fn contains(self, other: StageSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, other: StageSet) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: StageSet) {
        self.0 &= !other.0;
    }

    /// The stage a command byte belongs to, if it is an optional stage.
    pub fn from_command(code: u8) -> Option<StageSet> {
        STAGES.iter().find(|s| s.1 == code).map(|s| s.0)
    }
}

impl std::ops::BitOr for StageSet {
    type Output = StageSet;
    fn bitor(self, rhs: StageSet) -> StageSet {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for StageSet {
    fn bitor_assign(&mut self, rhs: StageSet) {
        self.insert(rhs);
    }
}

impl std::ops::BitAnd for StageSet {
    type Output = StageSet;
    fn bitand(self, rhs: StageSet) -> StageSet {
        StageSet(self.0 & rhs.0)
    }
}

/// What the filter needs from this connection; built from config by the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    /// `SMFIF_*` actions we may use (e.g. `SMFIF_ADDHDRS` for a result header).
    pub actions: u32,
    /// Stages whose commands we want to receive.
    pub stages: StageSet,
    /// Of `stages`, those we answer; the MTA is told not to wait for the others.
    pub reply_stages: StageSet,
    /// (SMFIM_* stage, space-separated macro names) to ask for, e.g. `(SMFIM_CONNECT,
    /// "{client_addr} {daemon_name} j")`. Non-empty lists make `negotiate` add
    /// `SMFIF_SETSYMLIST` when the MTA offers it.
    pub macros: Vec<(u32, String)>,
}

/// The agreed options for one MTA connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error("MTA speaks milter protocol version {0}; at least 2 is required")]
    VersionTooOld(u32),
}

/// Agrees on options with an MTA that sent OPTNEG (`mta_*` are its offer).
///
/// * version: `min(6, mta_version)`; below 2 is refused (v1 has no negotiation worth the
///   name and no MTA still speaks it).
/// * actions: `needs.actions & mta_actions`. A missing action is dropped, not fatal; the
///   server checks [`Negotiated::actions`] before using it.
/// * protocol: for each stage we don't want, its `NO*` bit (or, if the MTA can't skip it,
///   its `NR_*` bit so at least we don't have to answer); for each wanted stage we don't
///   answer, its `NR_*` bit. Only offered bits are set: where a bit is missing we receive
///   (and, see [`Negotiated::expects_reply`], answer) that stage after all.
///   `HDR_LEADSPC`, `SKIP`, `RCPT_REJ` and the `MDS_*` sizes are never requested.
pub fn negotiate(
    mta_version: u32,
    mta_actions: u32,
    mta_protocol: u32,
    needs: &Needs,
) -> Result<Negotiated, NegotiationError> {
    if mta_version < 2 {
        return Err(NegotiationError::VersionTooOld(mta_version));
    }
    let mut actions = needs.actions;
    if !needs.macros.is_empty() {
        actions |= SMFIF_SETSYMLIST;
    }
    let mut protocol = 0;
    for &(stage, _, no_bit, nr_bit) in &STAGES {
        let wanted = needs.stages.contains(stage);
        if !wanted && mta_protocol & no_bit != 0 {
            protocol |= no_bit;
        } else if !wanted || !needs.reply_stages.contains(stage) {
            protocol |= nr_bit & mta_protocol;
        }
    }
    Ok(Negotiated {
        version: mta_version.min(MILTER_VERSION),
        actions: actions & mta_actions,
        protocol,
    })
}

impl Negotiated {
    /// Does the MTA wait for a reply to this command under the agreed flags? EOM (`E`) and
    /// OPTNEG always; MACRO, ABORT, QUIT and QUIT_NC never; the optional stages unless their
    /// `SMFIP_NR_*` bit was agreed. Unknown bytes: `false` (they can't be decoded anyway).
    pub fn expects_reply(&self, command_code: u8) -> bool {
        match command_code {
            SMFIC_BODYEOB | SMFIC_OPTNEG => true,
            code => STAGES
                .iter()
                .find(|s| s.1 == code)
                .is_some_and(|&(_, _, _, nr_bit)| self.protocol & nr_bit == 0),
        }
    }

    /// Will the MTA send this command at all? False only for optional stages whose
    /// `SMFIP_NO*` bit was agreed.
    pub fn will_send(&self, command_code: u8) -> bool {
        STAGES
            .iter()
            .find(|s| s.1 == command_code)
            .is_none_or(|&(_, _, no_bit, _)| self.protocol & no_bit == 0)
    }

    /// `needs.actions` that the MTA did not grant (e.g. to warn once at startup).
    pub fn missing_actions(&self, needs: &Needs) -> u32 {
        needs.actions & !self.actions
    }

    /// The OPTNEG reply to send. Macro lists are included only when `SMFIF_SETSYMLIST` was
    /// agreed (protocol v6 MTAs), and lists for stages outside SMFIM_CONNECT..=SMFIM_EOH are
    /// dropped: sendmail treats an unknown stage as an error.
    pub fn reply(&self, macros: &[(u32, String)]) -> Reply {
        let macros = if self.actions & SMFIF_SETSYMLIST != 0 {
            macros
                .iter()
                .filter(|(stage, _)| *stage <= SMFIM_EOH)
                .map(|(stage, names)| (*stage, Bytes::copy_from_slice(names.as_bytes())))
                .collect()
        } else {
            Vec::new()
        };
        Reply::OptNeg {
            version: self.version,
            actions: self.actions,
            protocol: self.protocol,
            macros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);

    fn envelope_needs() -> Needs {
        Needs {
            actions: SMFIF_ADDHDRS,
            stages: StageSet::CONNECT | StageSet::HELO | StageSet::MAIL | StageSet::RCPT,
            reply_stages: StageSet::RCPT,
            macros: vec![],
        }
    }

    #[test]
    fn postfix_envelope_only() {
        let n = negotiate(POSTFIX.0, POSTFIX.1, POSTFIX.2, &envelope_needs()).unwrap();
        assert_eq!(n.version, 6);
        assert_eq!(n.actions, SMFIF_ADDHDRS);
        assert_eq!(
            n.protocol,
            SMFIP_NOHDRS
                | SMFIP_NOEOH
                | SMFIP_NOBODY
                | SMFIP_NOUNKNOWN
                | SMFIP_NODATA
                | SMFIP_NR_CONN
                | SMFIP_NR_HELO
                | SMFIP_NR_MAIL
        );
        for (code, expected) in [
            (b'C', false),
            (b'H', false),
            (b'M', false),
            (b'R', true),
            (b'E', true),
            (b'O', true),
            (b'D', false),
            (b'A', false),
            (b'Q', false),
            (b'K', false),
            (b'L', true), // not sent (NOHDRS), but no NR bit either
            (b'z', false),
        ] {
            assert_eq!(n.expects_reply(code), expected, "{}", code as char);
        }
        assert!(n.will_send(b'R') && n.will_send(b'E') && !n.will_send(b'B'));
        assert_eq!(
            n.reply(&[]),
            Reply::OptNeg {
                version: 6,
                actions: 1,
                protocol: n.protocol,
                macros: vec![]
            }
        );
    }

    #[test]
    fn only_offered_bits_are_set() {
        // An old MTA (v2 protocol bits only, no NR_* bits, few actions).
        let mut needs = envelope_needs();
        needs.actions |= SMFIF_QUARANTINE;
        let n = negotiate(2, SMFIF_ADDHDRS, 0x7f, &needs).unwrap();
        assert_eq!(n.version, 2);
        assert_eq!(n.actions, SMFIF_ADDHDRS);
        assert_eq!(n.missing_actions(&needs), SMFIF_QUARANTINE);
        assert_eq!(n.protocol, SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY);
        assert!(n.expects_reply(b'C') && n.expects_reply(b'M') && n.expects_reply(b'T'));
        assert!(n.will_send(b'T') && n.will_send(b'U'));
        // An MTA that can't skip BODY but can waive its reply: we get NR_BODY instead.
        let n = negotiate(6, 0x1ff, SMFI_CURR_PROT & !SMFIP_NOBODY, &needs).unwrap();
        assert_eq!(n.protocol & (SMFIP_NOBODY | SMFIP_NR_BODY), SMFIP_NR_BODY);
        assert!(!n.expects_reply(b'B'));
    }

    #[test]
    fn version_and_macros() {
        assert_eq!(
            negotiate(1, 0x1ff, 0x7f, &Needs::default()),
            Err(NegotiationError::VersionTooOld(1))
        );
        assert_eq!(
            negotiate(7, 0x1ff, 0x1f_ffff, &Needs::default())
                .unwrap()
                .version,
            6
        );
        let mut needs = envelope_needs();
        needs.macros = vec![
            (SMFIM_CONNECT, "{client_addr} j".into()),
            (9, "bogus".into()),
        ];
        let n = negotiate(6, 0x1ff, 0x1f_ffff, &needs).unwrap();
        assert_eq!(n.actions, SMFIF_ADDHDRS | SMFIF_SETSYMLIST);
        let Reply::OptNeg { macros, .. } = n.reply(&needs.macros) else {
            unreachable!()
        };
        assert_eq!(macros, vec![(0, Bytes::from_static(b"{client_addr} j"))]);
        // Without SETSYMLIST on offer, no lists are sent.
        let n = negotiate(6, SMFIF_ADDHDRS, 0x1f_ffff, &needs).unwrap();
        let Reply::OptNeg { macros, .. } = n.reply(&needs.macros) else {
            unreachable!()
        };
        assert!(macros.is_empty());
    }

    #[test]
    fn all_stages_answered_sets_nothing() {
        let needs = Needs {
            stages: StageSet::ALL,
            reply_stages: StageSet::ALL,
            ..Needs::default()
        };
        let n = negotiate(6, 0x1ff, 0x1f_ffff, &needs).unwrap();
        assert_eq!(n.protocol, 0);
        assert_eq!(StageSet::from_command(b'L'), Some(StageSet::HEADER));
        assert_eq!(StageSet::from_command(b'E'), None);
    }
}
