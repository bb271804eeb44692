//! Deterministic simulation of 3 and 5 managers running the code that ships
//! (`sim/real.rs`): the real driver, lease task, node (its peer requests
//! bincode-encoded and decoded as on the wire) and gossip core, on virtual
//! time with clocks 10 % fast or slow, through the traits of `src/edges.rs`:
//! a network that cuts, loses, slows and stalls, a shared in-memory store
//! that fails, times out and loses answers (`sim/store.rs`), and a model of
//! etcd with its quorum rules (`sim/etcd_model.rs`). Every run checks that
//! only the lease holder changes etcd, that no node admits an older fenced
//! request after a newer one, that no removal or stop takes a cluster below
//! quorum, that a quorum recovery waits its grace, that `backup-now`'s
//! backup holds what was acknowledged before the request, that no
//! acknowledged write is lost outside a restore, and that after healing the
//! cluster matches the spec.
//!
//! `SIM_REAL_SEEDS=<n> [SIM_SEED_START=<s>] cargo test --profile sim -p tests
//! --test sim real_driver_seeds` runs n seeds (the `sim` profile is release
//! at opt-level 1: as fast here, quicker to build); a failure prints the one-line
//! command that replays it. The `real_driver_catches_*` tests switch one
//! safety rule off each and show the checks catch it. `sim/lease.rs` drives
//! two lease clients alone on skewed clocks to check the lease's margin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod sim {
    pub mod etcd_model;
    pub mod lease;
    pub mod real;
    pub mod store;
}

use std::time::Duration;

use etcd_manager::rules::SafetyRules;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The lease's margin covers clocks 10 % fast or slow: a holder that stops
/// renewing and a contender on the other extreme never hold at once.
#[test]
fn sim_lease_under_clock_skew_is_exclusive() {
    let config = lock::LeaseConfig::default();
    for seed in 0..env_u64("SIM_LEASE_SEEDS", 1000) {
        if let Some(what) = sim::lease::overlap(seed, &config) {
            panic!("{what}");
        }
    }
}

/// And the check is not blind: with (almost) no margin the skew shows.
#[test]
fn sim_lease_catches_a_margin_too_small_for_the_skew() {
    let d = lock::LeaseConfig::default();
    let thin = lock::LeaseConfig::for_tests(d.duration, Duration::from_millis(1), d.renew_interval);
    let caught = (0..300).find_map(|seed| sim::lease::overlap(seed, &thin));
    let what = caught.expect("300 seeds with a 1 ms margin and 10 % skew found no overlap");
    eprintln!("caught: {what}");
}

/// `SIM_MARGIN_MS=<ms> SIM_LEASE_SEEDS=<n>`: how many seeds overlap with that margin.
#[test]
#[ignore]
fn sim_lease_survey_margin() {
    let d = lock::LeaseConfig::default();
    let margin = Duration::from_millis(env_u64("SIM_MARGIN_MS", d.margin.as_millis() as u64));
    let config = lock::LeaseConfig::for_tests(d.duration, margin, d.renew_interval);
    let count = env_u64("SIM_LEASE_SEEDS", 10_000);
    let bad: Vec<String> = (0..count)
        .filter_map(|seed| sim::lease::overlap(seed, &config))
        .collect();
    println!(
        "margin {margin:?}: {} of {count} overlap; first: {:?}",
        bad.len(),
        bad.first()
    );
}

/// The production code's safety rules for the real driver's runs, with the
/// ones `SIM_BREAK` names switched off (to watch the checks catch it).
fn real_rules_from_env() -> SafetyRules {
    match std::env::var("SIM_BREAK") {
        Ok(b) => SafetyRules::without(&b).unwrap_or_else(|e| panic!("SIM_BREAK: {e}")),
        Err(_) => SafetyRules::ALL,
    }
}

/// The simulation of the real driver, lease task and node
/// (`sim/real.rs`): `SIM_REAL_SEEDS` seeds (default 8) from `SIM_SEED_START`;
/// `SIM_BREAK=fence,recheck,retries,grace,quorum,settle,checksum,dump` switches rules off.
#[test]
fn real_driver_seeds() {
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_REAL_SEEDS", 8);
    let begun = std::time::Instant::now();
    let (mut effects, mut fenced, mut late, mut writes, mut restores, mut crashes, mut faults) =
        (0, 0, 0, 0, 0, 0, 0);
    let (mut jobs, mut calls, mut dumps, mut v2) = (0, 0, 0, 0);
    let rules = real_rules_from_env();
    for seed in start..start + count {
        let out = sim::real::Sim::run(seed, None, rules);
        if let Some(v) = &out.violation {
            let keep = env_u64("SIM_TRACE_LINES", 80) as usize;
            let tail: Vec<&String> = out.trace.iter().rev().take(keep).rev().collect();
            for line in tail {
                eprintln!("{line}");
            }
            panic!(
                "seed {seed} ({} managers, real driver) broke an invariant: {v}\nreplay: {}SIM_SEED_START={seed} SIM_REAL_SEEDS=1 cargo test --profile sim -p tests --test sim real_driver_seeds -- --nocapture",
                out.nodes,
                std::env::var("SIM_BREAK")
                    .map(|b| format!("SIM_BREAK={b} "))
                    .unwrap_or_default()
            );
        }
        if std::env::var("SIM_TRACE").is_ok() {
            for line in &out.trace {
                eprintln!("{line}");
            }
        }
        effects += out.effects;
        fenced += out.fenced_requests;
        late += out.late_requests;
        writes += out.acked_writes;
        restores += out.restores;
        jobs += out.restore_jobs;
        calls += out.restore_calls;
        dumps += out.dump_restores;
        v2 += out.v2_checks;
        crashes += out.crashes;
        faults += out.store_faults;
    }
    eprintln!(
        "real driver: {count} seeds in {:.1} s: {effects} etcd changes, {fenced} fenced requests ({late} late), {writes} writes acknowledged, {crashes} crashes, {restores} restores (asked as {jobs} jobs and {calls} single requests to older managers; {dumps} of a version change's dump), {v2} v2 store checks as jobs, {faults} store faults",
        begun.elapsed().as_secs_f64()
    );
    assert!(
        effects > 0 && fenced > 0 && writes > 0,
        "the runs must do something"
    );
    if count >= 200 {
        assert!(
            jobs > 0 && calls > 0,
            "200 seeds restore both as jobs and within one request"
        );
        assert!(
            dumps > 0 && v2 > 0,
            "200 seeds change versions by dump and restore, and check v2 stores before 3.6"
        );
    }
}

/// The real driver's simulation replays a seed exactly: the same trace
/// twice, on both sizes; another seed, another run.
#[test]
fn real_driver_one_seed_twice_gives_the_same_trace() {
    for (seed, nodes) in [(7, 3), (11, 5)] {
        let a = sim::real::Sim::run(seed, Some(nodes), SafetyRules::ALL);
        let b = sim::real::Sim::run(seed, Some(nodes), SafetyRules::ALL);
        assert!(a.trace.len() > 30, "too short a trace to compare");
        if let Some(k) = (0..a.trace.len().min(b.trace.len())).find(|&k| a.trace[k] != b.trace[k]) {
            panic!(
                "seed {seed} ({nodes} managers) diverged at line {k}:\n{}\n{}",
                a.trace[k], b.trace[k]
            );
        }
        assert_eq!(
            a.trace.len(),
            b.trace.len(),
            "seed {seed}: traces differ in length"
        );
        let c = sim::real::Sim::run(seed + 1, Some(nodes), SafetyRules::ALL);
        assert_ne!(a.trace, c.trace, "different seeds gave the same run");
    }
}

/// A seed among `seeds` (shifted to begin at `SIM_KNOB_START` if set) whose
/// run of the real driver with `rules` breaks an invariant, with its
/// verdict; the same seed with production's rules must pass.
fn real_knob_caught(rules: SafetyRules, seeds: std::ops::Range<u64>, needles: &[&str]) {
    let start = env_u64("SIM_KNOB_START", seeds.start);
    let limit = seeds.end - seeds.start;
    let (seed, what) = (start..start + limit)
        .find_map(|seed| {
            sim::real::Sim::run(seed, None, rules)
                .violation
                .map(|v| (seed, v))
        })
        .unwrap_or_else(|| {
            panic!("{limit} seeds of the real driver with {rules:?} broke no invariant: the checks are blind")
        });
    eprintln!("caught: seed {seed}: {what}");
    assert!(
        needles.iter().all(|n| what.contains(n)),
        "seed {seed}: expected a verdict with {needles:?}, got: {what}"
    );
    let out = sim::real::Sim::run(seed, None, SafetyRules::ALL);
    assert!(
        out.violation.is_none(),
        "seed {seed} fails with production's rules too: {:?}",
        out.violation
    );
}

/// The fence, switched off in the node that ships: a request of an older
/// epoch (stalled on its way while its leader lost the lease) is admitted
/// after the successor's, and the check names it.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_missing_fence() {
    let rules = SafetyRules {
        fence: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 0..600, &["admitted", "after one of epoch"]);
}

/// `--auto-recover-quorum-loss` without its grace, in the driver that
/// ships: the quorum is rebuilt while a lost voter was silent for less than
/// the grace, and the check names it.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_recovery_without_grace() {
    let rules = SafetyRules {
        recovery_grace: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 0..400, &["recovered quorum", "silent only"]);
}

/// Membership retries bounded by the lease, switched off in the driver that
/// ships (15 s whatever the lease has left): a leader paused in the middle
/// of a retry of a change etcd refused wakes up after a successor took the
/// lease and its retry lands. Pauses aimed at a refused membership change
/// come with spec changes. A replay of the found seed: since restores run
/// as jobs (the leader polls each node every second), the runs' schedules
/// moved and seeds 0-3383 no longer reach the case (it was seed 94); if
/// seed 3384's schedule changes, this fails with "broke no invariant" and a
/// search with `SIM_BREAK=retries` finds the new seed.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_retries_past_the_lease() {
    let rules = SafetyRules {
        bound_retries: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(
        rules,
        3384..3385,
        &["changed etcd (member_", "newest lease record"],
    );
}

/// The checksum check of a download, switched off in the backup store that
/// ships: an operator restores a backup whose data file was replaced by an
/// older backup's (valid gzip, other content); the leader's check and the
/// nodes' do not see it, and the restored snapshot is not the backup as
/// written. With the check on, the leader refuses the restore.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_restore_without_the_checksum_check() {
    let rules = SafetyRules {
        restore_checksum: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 0..400, &["a snapshot that is not", "as written"]);
}

/// A version change by dump and restore that does not quarantine every
/// member first (nor wait for the managers of those it cannot reach), in
/// the controller that ships: client writes land after the dump, and the
/// restore of the dump loses them.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_dump_without_quarantine() {
    let rules = SafetyRules {
        dump_quarantine: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(
        rules,
        0..200,
        &["a version change's dump", "acknowledged writes"],
    );
}

/// Gossip's settle time after a start, switched off in the driver that
/// ships. Seed 842 found the case: five managers, a spec of one member that
/// the cluster has not shrunk to yet, a queued restore and a free lease; n4
/// comes back from a 4 s crash and, in its first pass, its gossip shows it
/// alone, so a majority of the managers it knows (itself) and of the spec
/// (one) accepts it; it sees no etcd anywhere and restores onto itself while
/// n1-n3 serve on, and writes they acknowledge meanwhile are lost. Since
/// gossip payloads are sent only by their own member (issue 30) the
/// schedules moved: seed 613 is the case now (a manager that leads before
/// its gossip settled takes a version change's dump while a member it does
/// not yet see takes a write; the restore of the dump loses it), and passes
/// with every rule on. A replay of the found seed, not a search: if its
/// schedule changes, this fails with "broke no invariant" and a search with
/// `SIM_BREAK=settle` finds the new seed.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_leader_that_does_not_wait_for_gossip() {
    let rules = SafetyRules {
        settle: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 613..614, &["acknowledged writes"]);
}

/// The lease re-check, switched off in the driver that ships (before every
/// action, before every membership change and before every fenced
/// request): a leader paused in the middle of a pass wakes up after its
/// lease passed to another manager and changes etcd's membership anyway.
#[test]
#[ignore = "optimised builds only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_leader_that_does_not_recheck_its_lease() {
    let rules = SafetyRules {
        recheck_lease: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 0..500, &["changed etcd", "newest lease record"]);
}

/// A store that denies every backup write (a bucket policy gone wrong) is
/// an operator's job, and the leader's status report says so (the backup's
/// `AccessDenied` is permanent: issue #33); the cluster stays whole, and
/// once the store takes writes again the run ends whole.
#[test]
fn real_driver_says_a_store_that_denies_backups_needs_an_operator() {
    let out = sim::real::Sim::run_scenario(
        7,
        Some(3),
        SafetyRules::ALL,
        sim::real::Scenario::DenyBackups,
    );
    assert!(
        out.violation.is_none(),
        "{:?}\n{}",
        out.violation,
        out.trace.join("\n")
    );
    let line = out.needs_operator_said.unwrap_or_else(|| {
        panic!(
            "status never said an operator is needed:\n{}",
            out.trace.join("\n")
        )
    });
    assert!(
        line.contains("take_backup") && line.contains("AccessDenied"),
        "the line names the action and the store's words: {line}"
    );
}
