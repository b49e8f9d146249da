//! The plan: which measurements run, grouped so that each suite and key type starts its pairs once,
//! and how many runs that makes (for the progress line).

use super::catalog::{Group, KeyType, Metric, STimeClient, Suite, Test, default_suite};
use super::options::Options;
use super::report::Key;

/// One measurement of one setup (a suite and key type with every peer's pair running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Bulk,
    Latency,
    Messages,
    Handshake,
    Kx(Group),
    STime(STimeClient),
}

impl Step {
    pub fn test(self) -> Test {
        match self {
            Self::Bulk => Test::Bulk,
            Self::Latency => Test::Latency,
            Self::Messages => Test::Messages,
            Self::Handshake => Test::Handshake,
            Self::Kx(_) => Test::Kx,
            Self::STime(_) => Test::STime,
        }
    }

    fn group(self) -> Option<Group> {
        match self {
            Self::Kx(g) => Some(g),
            _ => None,
        }
    }

    fn client(self) -> Option<STimeClient> {
        match self {
            Self::STime(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the direct baseline runs too (before the proxies, in every repetition).
    pub fn has_direct(self) -> bool {
        matches!(self, Self::Bulk | Self::Latency | Self::Messages)
    }

    pub fn label(self, suite: &Suite, key: KeyType) -> String {
        match self {
            Self::Bulk => format!("bulk {} ({})", suite.iana, key.name()),
            Self::Latency => format!("ping-pong {} ({})", suite.iana, key.name()),
            Self::Messages => format!("small messages {} ({})", suite.iana, key.name()),
            Self::Handshake => format!("handshakes through the pair ({})", key.name()),
            Self::Kx(g) => format!("handshakes to the inbound side ({})", g.name()),
            Self::STime(c) => format!("openssl s_time -new, {}", c.label()),
        }
    }
}

/// Pairs that share a suite and key type run together: started once, measured in turn.
pub struct Setup {
    pub suite: &'static Suite,
    pub key_type: KeyType,
    pub steps: Vec<Step>,
}

impl Setup {
    /// The report row of `metric` for `step` in this setup.
    pub fn row_key(&self, step: Step, metric: Metric) -> Key {
        Key {
            test: step.test(),
            suite: self.suite,
            key_type: self.key_type,
            group: step.group(),
            client: step.client(),
            metric,
        }
    }
}

/// The setups in the order they run: the suites (bulk, latency, messages), then the handshake tests on the
/// default suite. The memory test is not here: it starts a fresh pair per run.
pub fn plan(o: &Options) -> Vec<Setup> {
    let mut setups: Vec<Setup> = Vec::new();
    let mut add = |suite: &'static Suite, key: KeyType, step: Step| match setups
        .iter_mut()
        .find(|s| std::ptr::eq(s.suite, suite) && s.key_type == key)
    {
        Some(s) => s.steps.push(step),
        None => setups.push(Setup {
            suite,
            key_type: key,
            steps: vec![step],
        }),
    };
    for s in &o.suites {
        if o.wants(Test::Bulk) {
            add(s, s.key_type(), Step::Bulk);
        }
        if o.wants(Test::Latency) {
            add(s, s.key_type(), Step::Latency);
        }
        if o.wants(Test::Messages) {
            add(s, s.key_type(), Step::Messages);
        }
    }
    let d = default_suite();
    if o.wants(Test::Handshake) {
        for k in &o.key_types {
            add(d, *k, Step::Handshake);
        }
    }
    if o.wants(Test::Kx) {
        for g in &o.groups {
            add(d, KeyType::EcdsaP256, Step::Kx(*g));
        }
    }
    if o.wants(Test::STime) {
        for c in STimeClient::ALL {
            add(d, KeyType::EcdsaP256, Step::STime(c));
        }
    }
    setups
}

/// How many measurements the plan makes with `peers` (the progress line's total).
pub fn count_runs(setups: &[Setup], o: &Options, peers: usize) -> usize {
    let planned: usize = setups
        .iter()
        .flat_map(|s| s.steps.iter())
        .map(|st| o.repeat * (peers + usize::from(st.has_direct())))
        .sum();
    let memory = if o.wants(Test::Memory) {
        o.repeat * peers
    } else {
        0
    };
    planned + memory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_steps_by_suite_and_key() {
        let args = <crate::args::Cli as clap::Parser>::parse_from(["ringseal", "bench", "--quick"]);
        let crate::args::Command::Bench(a) = args.command else {
            panic!("not bench")
        };
        let o = Options::from_args(a).unwrap();
        let setups = plan(&o);
        let main = &setups[0];
        assert!(std::ptr::eq(main.suite, default_suite()));
        assert_eq!(main.key_type, KeyType::EcdsaP256);
        assert!(main.steps.contains(&Step::Bulk) && main.steps.contains(&Step::Handshake));
        // Small messages run per suite, like bulk, with the direct baseline.
        assert!(
            setups
                .iter()
                .all(|s| s.steps.contains(&Step::Messages) == (s.key_type == s.suite.key_type()))
        );
        assert!(Step::Messages.has_direct());
        assert!(main.steps.contains(&Step::Kx(Group::X25519Mlkem768)));
        assert!(setups.iter().any(|s| s.key_type == KeyType::Ed25519));
    }
}
