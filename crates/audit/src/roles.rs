//! Staff roles and the permission matrix: who on the exchange's staff may do what, in one place.

use serde::{Deserialize, Serialize};

/// A staff role. A staff member may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Customer support: reads accounts to answer customers.
    Support,
    /// Risk analyst: reads accounts and works the review queue.
    RiskAnalyst,
    /// Compliance reviewer, first level.
    ComplianceL1,
    /// Compliance reviewer, second level.
    ComplianceL2,
    /// Compliance reviewer, third level: the money-laundering reporting officer.
    ComplianceL3,
    /// Treasury custodian: moves the exchange's own funds and takes part in signing ceremonies.
    TreasuryCustodian,
    /// Administrator: manages staff and keys; role changes need a second administrator.
    Administrator,
    /// Auditor: reads everything, changes nothing, verifies the audit log.
    Auditor,
}

/// Something a staff member may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read accounts, balances and transfers.
    LedgerRead,
    /// Create accounts and transfers by hand (treasury operations, corrections by new transfers).
    LedgerWrite,
    /// Read the staff list and their roles.
    StaffRead,
    /// Create staff and request role changes.
    StaffManage,
    /// Approve another administrator's role change (four eyes).
    StaffApprove,
    /// Rotate data keys and rewrap ciphertexts.
    KeysManage,
    /// Read and export the audit log.
    AuditRead,
    /// Verify the audit log's chain and signatures.
    AuditVerify,
    /// Unlock or recover a customer's account after identity checks (every use audited with the checks made).
    CustomerRecover,
    /// Read custody: wallets, balances, the cold share, ceremonies, sweeps and refills.
    CustodyRead,
    /// Take part in custody: register as a custodian, contribute to key and signing ceremonies, propose and approve
    /// refills of the hot wallet from cold (never one's own proposal).
    CustodyCeremony,
    /// Read the risk engine's review queue, its rules and the scored events.
    RiskRead,
    /// Work the review queue: assign, annotate and resolve cases (a release unfreezes the account).
    RiskReview,
    /// Put a new version of the rule file in force.
    RiskRules,
    /// Read compliance: cases, list versions, the address block and risk lists, KYC submissions (masked), Travel
    /// Rule records (masked) and large-transfer reviews.
    ComplianceRead,
    /// Work compliance cases and KYC submissions (approve, reject, resolve) and decide large-transfer reviews at the
    /// levels one's roles cover.
    ComplianceReview,
    /// Import sanctions lists and manage the exchange's own address block and risk lists.
    ComplianceLists,
    /// See customers' personal data (KYC submissions and documents, Travel Rule parties) unmasked; every access is
    /// audited.
    PersonalData,
    /// Read withdrawals: the queue awaiting approval or review, each with its customer's and destination's history.
    WithdrawalRead,
    /// Approve or reject withdrawals the policy sends to people (with a second factor; never one's own, never
    /// twice).
    WithdrawalApprove,
    /// Propose and approve versions of the withdrawal policy (never one's own proposal).
    WithdrawalPolicy,
    /// Take a proof-of-reserves snapshot of every customer's balances and publish it.
    ReservesPublish,
    /// Read every snapshot's full leaf file (each customer's balances under a salted commitment) and any customer's
    /// inclusion proof, to audit a publication.
    ReservesRead,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 8] = [
        Role::Support,
        Role::RiskAnalyst,
        Role::ComplianceL1,
        Role::ComplianceL2,
        Role::ComplianceL3,
        Role::TreasuryCustodian,
        Role::Administrator,
        Role::Auditor,
    ];

    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Support => "support",
            Role::RiskAnalyst => "risk_analyst",
            Role::ComplianceL1 => "compliance_l1",
            Role::ComplianceL2 => "compliance_l2",
            Role::ComplianceL3 => "compliance_l3",
            Role::TreasuryCustodian => "treasury_custodian",
            Role::Administrator => "administrator",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The permission matrix: the only place that says what a role may do. Least privilege: nobody gets a
    /// permission their work does not need, and no single role can both change who may do what and approve it.
    pub fn permits(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Support => matches!(permission, P::LedgerRead | P::CustomerRecover),
            Role::RiskAnalyst => matches!(
                permission,
                P::LedgerRead | P::RiskRead | P::RiskReview | P::RiskRules | P::WithdrawalRead | P::WithdrawalApprove
            ),
            Role::ComplianceL1 => matches!(
                permission,
                P::LedgerRead
                    | P::RiskRead
                    | P::ComplianceRead
                    | P::ComplianceReview
                    | P::PersonalData
                    | P::WithdrawalRead
            ),
            Role::ComplianceL2 | Role::ComplianceL3 => matches!(
                permission,
                P::LedgerRead
                    | P::RiskRead
                    | P::ComplianceRead
                    | P::ComplianceReview
                    | P::ComplianceLists
                    | P::PersonalData
                    | P::WithdrawalRead
            ),
            Role::TreasuryCustodian => matches!(
                permission,
                P::LedgerRead
                    | P::LedgerWrite
                    | P::CustodyRead
                    | P::CustodyCeremony
                    | P::WithdrawalRead
                    | P::WithdrawalApprove
                    | P::ReservesPublish
                    | P::ReservesRead
            ),
            Role::Administrator => matches!(
                permission,
                P::StaffRead | P::StaffManage | P::StaffApprove | P::KeysManage | P::CustodyRead | P::WithdrawalPolicy
            ),
            Role::Auditor => matches!(
                permission,
                P::LedgerRead
                    | P::StaffRead
                    | P::AuditRead
                    | P::AuditVerify
                    | P::CustodyRead
                    | P::RiskRead
                    | P::ComplianceRead
                    | P::WithdrawalRead
                    | P::ReservesRead
            ),
        }
    }
}

/// Why a set of roles may not be held by one person, if it may not: least privilege is about people, not roles, so
/// a grant that would give someone two roles that together break separation of duties is refused.
pub fn separation_violation(roles: &[Role]) -> Option<&'static str> {
    let may = |p: Permission| p.granted_by(roles);
    if may(Permission::LedgerWrite) && (may(Permission::StaffManage) || may(Permission::StaffApprove)) {
        return Some("whoever moves money may not also change who may do what");
    }
    let writes = [
        Permission::LedgerWrite,
        Permission::StaffManage,
        Permission::StaffApprove,
        Permission::KeysManage,
        Permission::CustomerRecover,
        Permission::CustodyCeremony,
        Permission::RiskReview,
        Permission::RiskRules,
        Permission::ComplianceReview,
        Permission::ComplianceLists,
        Permission::WithdrawalApprove,
        Permission::WithdrawalPolicy,
        Permission::ReservesPublish,
    ];
    if roles.contains(&Role::Auditor) && writes.into_iter().any(may) {
        return Some("an auditor may not also hold a role that changes anything");
    }
    None
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 23] = [
        Permission::LedgerRead,
        Permission::LedgerWrite,
        Permission::StaffRead,
        Permission::StaffManage,
        Permission::StaffApprove,
        Permission::KeysManage,
        Permission::AuditRead,
        Permission::AuditVerify,
        Permission::CustomerRecover,
        Permission::CustodyRead,
        Permission::CustodyCeremony,
        Permission::RiskRead,
        Permission::RiskReview,
        Permission::RiskRules,
        Permission::ComplianceRead,
        Permission::ComplianceReview,
        Permission::ComplianceLists,
        Permission::PersonalData,
        Permission::WithdrawalRead,
        Permission::WithdrawalApprove,
        Permission::WithdrawalPolicy,
        Permission::ReservesPublish,
        Permission::ReservesRead,
    ];

    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::LedgerRead => "ledger_read",
            Permission::LedgerWrite => "ledger_write",
            Permission::StaffRead => "staff_read",
            Permission::StaffManage => "staff_manage",
            Permission::StaffApprove => "staff_approve",
            Permission::KeysManage => "keys_manage",
            Permission::AuditRead => "audit_read",
            Permission::AuditVerify => "audit_verify",
            Permission::CustomerRecover => "customer_recover",
            Permission::CustodyRead => "custody_read",
            Permission::CustodyCeremony => "custody_ceremony",
            Permission::RiskRead => "risk_read",
            Permission::RiskReview => "risk_review",
            Permission::RiskRules => "risk_rules",
            Permission::ComplianceRead => "compliance_read",
            Permission::ComplianceReview => "compliance_review",
            Permission::ComplianceLists => "compliance_lists",
            Permission::PersonalData => "personal_data",
            Permission::WithdrawalRead => "withdrawal_read",
            Permission::WithdrawalApprove => "withdrawal_approve",
            Permission::WithdrawalPolicy => "withdrawal_policy",
            Permission::ReservesPublish => "reserves_publish",
            Permission::ReservesRead => "reserves_read",
        }
    }

    /// Whether any of `roles` grants it.
    pub fn granted_by(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| r.permits(self))
    }

    /// The matrix as a Markdown table, for the documentation.
    pub fn matrix_markdown() -> String {
        let mut out = String::from("| permission |");
        for role in Role::ALL {
            out.push_str(&format!(" {} |", role.as_str()));
        }
        out.push_str("\n| --- |");
        out.push_str(&" :-: |".repeat(Role::ALL.len()));
        out.push('\n');
        for permission in Permission::ALL {
            out.push_str(&format!("| {} |", permission.as_str()));
            for role in Role::ALL {
                out.push_str(if role.permits(permission) { " ✓ |" } else { "   |" });
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn no_permitted_combination_of_roles_breaks_separation_of_duties() {
        // Every set of roles either passes the check or is refused by it; those that pass never combine moving money
        // with changing who may do what.
        for mask in 0u32..(1 << Role::ALL.len()) {
            let roles: Vec<Role> =
                Role::ALL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, r)| *r).collect();
            if separation_violation(&roles).is_none() {
                let money = Permission::LedgerWrite.granted_by(&roles);
                let staff = Permission::StaffManage.granted_by(&roles) || Permission::StaffApprove.granted_by(&roles);
                assert!(!(money && staff), "{roles:?}");
            }
        }
        assert!(separation_violation(&[Role::Administrator, Role::TreasuryCustodian]).is_some());
        assert!(separation_violation(&[Role::Auditor, Role::Administrator]).is_some());
        assert!(separation_violation(&[Role::Support, Role::RiskAnalyst]).is_none());
    }

    #[test]
    fn least_privilege_holds() {
        // Nobody who can move money can change who may do what, and auditors change nothing.
        for role in Role::ALL {
            assert!(!(role.permits(Permission::LedgerWrite) && role.permits(Permission::StaffManage)), "{role:?}");
        }
        for write in
            [Permission::LedgerWrite, Permission::StaffManage, Permission::StaffApprove, Permission::KeysManage]
        {
            assert!(!Role::Auditor.permits(write));
        }
        assert!(Permission::AuditVerify.granted_by(&[Role::Support, Role::Auditor]));
        assert!(!Permission::AuditVerify.granted_by(&[Role::Support]));
    }
}
