//! Deterministic simulation of 3 and 5 managers (issue: leadership you can
//! trust). Each simulated manager runs the real gossip core, the real lease
//! client and the real controller on virtual time, with clocks 10 % fast or
//! slow, over an in-memory network that cuts, loses and delays packets, a
//! shared in-memory store that fails, times out and loses answers, and a
//! model of etcd with quorum rules. After every step it checks:
//!
//! * never two nodes acting in one epoch, and no action of an older epoch
//!   after one of a newer epoch (no overlap in true time);
//! * epochs only grow (each new leadership above the last);
//! * no plan takes a cluster that has quorum below it;
//! * a node never applies a request older than the highest epoch it has seen
//!   (requests can land long after their caller gave up: a cut, a lossy link,
//!   a paused target; the leader's own lease cannot order those, the target's
//!   fence must);
//!
//! and, after all faults heal, liveness: one leader, the spec's members all
//! healthy and out of quarantine.
//!
//! `SIM_SEEDS=<n> [SIM_SEED_START=<s>] cargo test --release -p tests sim`
//! runs n seeds; a failure prints the one-line command that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod sim {
    pub mod etcd_model;
    pub mod lease;
    pub mod real;
    pub mod store;
    pub mod world;
}

use std::time::Duration;

use etcd_manager::rules::SafetyRules;
use sim::world::{Knobs, Outcome, World};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn run(seed: u64, nodes: Option<usize>, knobs: Knobs) -> Outcome {
    World::new(seed, nodes, knobs).run()
}

fn replay_line(seed: u64) -> String {
    let broken = match std::env::var("SIM_BREAK") {
        Ok(b) => format!("SIM_BREAK={b} "),
        Err(_) => String::new(),
    };
    format!(
        "{broken}SIM_SEED_START={seed} SIM_SEEDS=1 cargo test --release -p tests --test sim sim_seeds -- --nocapture"
    )
}

/// The rules `sim_seeds` runs with: production's, or with one switched off
/// by `SIM_BREAK` (to watch the checks catch it and replay what they caught).
fn knobs_from_env() -> Knobs {
    let Ok(broken) = std::env::var("SIM_BREAK") else {
        return Knobs::PRODUCTION;
    };
    let mut k = Knobs::PRODUCTION;
    for rule in broken.split(',') {
        match rule {
            "fence" => k.fence = false,
            "recheck" => k.recheck_lease = false,
            "retries" => k.bound_retries = false,
            "grace" => k.recovery_grace = false,
            other => {
                panic!(
                    "SIM_BREAK={other:?}: expected fence, recheck, retries or grace (comma-separated)"
                )
            }
        }
    }
    k
}

/// `SIM_SEEDS` seeds (default 40; CI runs 1000 in release) from
/// `SIM_SEED_START`; `SIM_BREAK=fence|recheck|retries` switches a rule off.
#[test]
fn sim_seeds() {
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_SEEDS", 40);
    let begun = std::time::Instant::now();
    let (mut effects, mut fenced, mut leaderships, mut store_faults) = (0, 0, 0, 0);
    let (mut late, mut stale, mut recoveries) = (0, 0, 0);
    let mut sizes = [0usize; 6];
    let knobs = knobs_from_env();
    for seed in start..start + count {
        let out = run(seed, None, knobs);
        // SIM_SURVEY: list every failing seed instead of stopping at the first.
        if std::env::var("SIM_SURVEY").is_ok()
            && let Some(v) = &out.violation
        {
            eprintln!("seed {seed}: {}", v.what.lines().next().unwrap_or(""));
            continue;
        }
        if let Some(v) = &out.violation {
            let keep = env_u64("SIM_TRACE_LINES", 60) as usize;
            let tail: Vec<&String> = out.trace.iter().rev().take(keep).rev().collect();
            for line in tail {
                eprintln!("{line}");
            }
            panic!(
                "seed {seed} ({} nodes) broke an invariant at {:?}: {}\nreplay: {}",
                out.nodes,
                v.at,
                v.what,
                replay_line(seed)
            );
        }
        effects += out.effects;
        fenced += out.fenced;
        leaderships += out.leaderships;
        store_faults += out.store_faults;
        late += out.late;
        stale += out.stale_admitted;
        recoveries += out.recoveries;
        sizes[out.nodes] += 1;
    }
    eprintln!(
        "sim: {count} seeds from {start} ({} of 3 nodes, {} of 5) in {:.1?}: {leaderships} leaderships, {effects} leader actions, {late} late requests ({stale} stale but admitted), {fenced} fenced requests, {store_faults} store faults, {recoveries} quorum recoveries",
        sizes[3],
        sizes[5],
        begun.elapsed()
    );
    assert!(
        leaderships >= count as usize,
        "every seed elects at least one leader"
    );
    // Coverage, over enough seeds (a replay of one seed need not show it all).
    if count >= 40 {
        assert!(
            effects > 0 && store_faults > 0 && late > 0,
            "the faults and actions did not happen"
        );
    }
    if count >= 1000 {
        assert!(
            fenced > 0,
            "no fence refused anything: the fence is untested"
        );
        assert!(
            recoveries > 0,
            "no quorum was recovered: the recovery is untested"
        );
    }
}

#[test]
fn sim_three_and_five_nodes_reach_the_spec() {
    for (seed, nodes) in [(7, 3), (8, 5)] {
        let out = run(seed, Some(nodes), Knobs::PRODUCTION);
        assert!(
            out.violation.is_none(),
            "seed {seed}: {:?}\nreplay: {}",
            out.violation,
            replay_line(seed)
        );
        assert_eq!(out.nodes, nodes);
        assert!(out.effects > 0);
    }
}

#[test]
fn sim_determinism_one_seed_twice_gives_the_same_trace() {
    let a = run(42, None, Knobs::PRODUCTION);
    let b = run(42, None, Knobs::PRODUCTION);
    assert!(a.trace.len() > 20, "too short a trace to compare");
    assert_eq!(a.trace, b.trace, "seed 42 gave two different runs");
    let c = run(43, None, Knobs::PRODUCTION);
    assert_ne!(a.trace, c.trace, "different seeds gave the same run");
    // More seeds, on both sizes, with late requests, retries and fences in
    // them: whole traces, so any divergence shows where it starts.
    for seed in [69, 100, 191] {
        for nodes in [3, 5] {
            let a = run(seed, Some(nodes), Knobs::PRODUCTION);
            let b = run(seed, Some(nodes), Knobs::PRODUCTION);
            if let Some(k) =
                (0..a.trace.len().min(b.trace.len())).find(|&k| a.trace[k] != b.trace[k])
            {
                panic!(
                    "seed {seed} ({nodes} nodes) diverged at line {k}:\n{}\n{}",
                    a.trace[k], b.trace[k]
                );
            }
            assert_eq!(
                a.trace.len(),
                b.trace.len(),
                "seed {seed}: trace lengths differ"
            );
        }
    }
}

/// The checks catch a node that skips the epoch check: a request its old
/// leader sent before being cut off lands after the successor's, and the
/// node applies it. The lease re-check cannot stop that (the request left
/// while the lease was held), only the fence can.
#[test]
fn sim_catches_a_skipped_epoch_check() {
    let no_fence = Knobs {
        fence: false,
        ..Knobs::PRODUCTION
    };
    let limit = 400;
    let caught = (0..limit)
        .find_map(|seed| run(seed, None, no_fence).violation.map(|v| (seed, v.what)))
        .unwrap_or_else(|| {
            panic!("{limit} seeds without the epoch check broke no invariant: the checks are blind")
        });
    eprintln!("caught: {caught:?}");
    assert!(
        caught.1.contains("not silenced"),
        "seed {}: expected the fence check to fire, got: {}",
        caught.0,
        caught.1
    );
    // The same seed with the epoch check is safe, and its fence refused the
    // stale request.
    let out = run(caught.0, None, Knobs::PRODUCTION);
    assert!(
        out.violation.is_none(),
        "seed {}: {:?}",
        caught.0,
        out.violation
    );
    assert!(out.fenced > 0, "seed {}: nothing was fenced", caught.0);
}

/// Quorum recovery's grace: with the leader given none, a majority wiped is
/// rebuilt while the lost voters have been gone for less than the grace,
/// and the checks flag it; with the grace the same seed recovers, later,
/// and ends whole.
#[test]
fn sim_catches_a_recovery_without_grace() {
    let no_grace = Knobs {
        recovery_grace: false,
        ..Knobs::PRODUCTION
    };
    let limit = 200;
    let (seed, what) = (0..limit)
        .find_map(|seed| run(seed, None, no_grace).violation.map(|v| (seed, v.what)))
        .unwrap_or_else(|| {
            panic!("{limit} seeds of recoveries without a grace broke no invariant")
        });
    eprintln!("caught: seed {seed}: {what}");
    assert!(what.contains("gone only"), "seed {seed}: {what}");
    let out = run(seed, None, Knobs::PRODUCTION);
    assert!(out.violation.is_none(), "seed {seed}: {:?}", out.violation);
    assert!(
        out.recoveries > 0,
        "seed {seed} recovered nothing with the grace"
    );
}

/// The bug the simulation found: the driver retried a membership change etcd
/// refused (its strict reconfiguration check) for 15 s under a 5 s lease, so
/// a leader cut off mid-retry could change the membership after its successor
/// had started to act (even remove the successor's own member). Retries now
/// stop with the lease; with the old rule the checks flag it.
#[test]
fn sim_catches_retries_past_the_lease() {
    let old_rule = Knobs {
        bound_retries: false,
        ..Knobs::PRODUCTION
    };
    let limit = 300;
    let (seed, what) = (0..limit)
        .find_map(|seed| run(seed, None, old_rule).violation.map(|v| (seed, v.what)))
        .unwrap_or_else(|| panic!("{limit} seeds of 15 s retries broke no invariant"));
    eprintln!("caught: seed {seed}: {what}");
    assert!(what.contains("overlapping epochs"), "seed {seed}: {what}");
    let out = run(seed, None, Knobs::PRODUCTION);
    assert!(out.violation.is_none(), "seed {seed}: {:?}", out.violation);
}

/// The checks catch a broken safety rule: leaders that do not re-check the
/// lease after a pause and nodes that do not check epochs let a stale leader
/// act after its successor. With the fence alone (no re-check) the stale
/// leader is refused, and nothing is flagged.
#[test]
fn sim_catches_a_broken_fence() {
    let broken = Knobs {
        fence: false,
        recheck_lease: false,
        ..Knobs::PRODUCTION
    };
    let caught: Vec<(u64, String)> = (0..200u64)
        .filter_map(|seed| run(seed, None, broken).violation.map(|v| (seed, v.what)))
        .take(3)
        .collect();
    assert!(
        !caught.is_empty(),
        "200 seeds without the fence and the re-check broke no invariant: the checks are blind"
    );
    eprintln!("caught: {caught:?}");
    // The same seeds with the fence on are safe again.
    let fence_only = Knobs {
        recheck_lease: false,
        ..Knobs::PRODUCTION
    };
    for (seed, _) in &caught {
        let out = run(*seed, None, fence_only);
        if let Some(v) = &out.violation {
            assert!(
                !v.what.contains("not silenced"),
                "seed {seed}: the fence did not silence the stale leader: {}",
                v.what
            );
        }
    }
}

/// `SIM_SEED_START=<seed> cargo test --release -p tests --test sim sim_dump_trace
/// -- --ignored --nocapture` prints one seed's whole trace.
#[test]
#[ignore]
fn sim_dump_trace() {
    let seed = env_u64("SIM_SEED_START", 0);
    for line in run(seed, None, Knobs::PRODUCTION).trace {
        println!("{line}");
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
/// `SIM_BREAK=fence,recheck,retries,grace,quorum` switches rules off.
#[test]
fn real_driver_seeds() {
    let start = env_u64("SIM_SEED_START", 0);
    let count = env_u64("SIM_REAL_SEEDS", 8);
    let begun = std::time::Instant::now();
    let (mut effects, mut fenced, mut late, mut writes, mut restores, mut crashes, mut faults) =
        (0, 0, 0, 0, 0, 0, 0);
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
                "seed {seed} ({} managers, real driver) broke an invariant: {v}\nreplay: {}SIM_SEED_START={seed} SIM_REAL_SEEDS=1 cargo test --release -p tests --test sim real_driver_seeds -- --nocapture",
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
        crashes += out.crashes;
        faults += out.store_faults;
    }
    eprintln!(
        "real driver: {count} seeds in {:.1} s: {effects} etcd changes, {fenced} fenced requests ({late} late), {writes} writes acknowledged, {crashes} crashes, {restores} restores, {faults} store faults",
        begun.elapsed().as_secs_f64()
    );
    assert!(
        effects > 0 && fenced > 0 && writes > 0,
        "the runs must do something"
    );
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
#[ignore = "release only: scripts/test.sh runs it with --ignored"]
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
#[ignore = "release only: scripts/test.sh runs it with --ignored"]
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
/// come with spec changes.
#[test]
#[ignore = "release only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_retries_past_the_lease() {
    let rules = SafetyRules {
        bound_retries: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(
        rules,
        0..800,
        &["changed etcd (member_", "newest lease record"],
    );
}

/// Gossip's settle time after a start, switched off in the driver that
/// ships. Seed 842 found the case: five managers, a spec of one member that
/// the cluster has not shrunk to yet, a queued restore and a free lease; n4
/// comes back from a 4 s crash and, in its first pass, its gossip shows it
/// alone, so a majority of the managers it knows (itself) and of the spec
/// (one) accepts it; it sees no etcd anywhere and restores onto itself while
/// n1-n3 serve on, and writes they acknowledge meanwhile are lost. A replay
/// of the found seed, not a search: the combination is rare (seeds 843-1842
/// do not reach it), so if the simulation's schedule for seed 842 changes,
/// this fails with "broke no invariant" and a search with `SIM_BREAK=settle`
/// finds the new seed.
#[test]
#[ignore = "release only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_leader_that_does_not_wait_for_gossip() {
    let rules = SafetyRules {
        settle: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(
        rules,
        842..843,
        &["acknowledged writes lost outside a restore"],
    );
}

/// The lease re-check, switched off in the driver that ships (before every
/// action, before every membership change and before every fenced
/// request): a leader paused in the middle of a pass wakes up after its
/// lease passed to another manager and changes etcd's membership anyway.
#[test]
#[ignore = "release only: scripts/test.sh runs it with --ignored"]
fn real_driver_catches_a_leader_that_does_not_recheck_its_lease() {
    let rules = SafetyRules {
        recheck_lease: false,
        ..SafetyRules::ALL
    };
    real_knob_caught(rules, 0..500, &["changed etcd", "newest lease record"]);
}
