//! Thousands of seeded simulations per CI run: every invariant after every step, every job
//! finished with the right outputs at the end, the log replaying to the same state.

#[test]
fn two_thousand_seeds_keep_every_invariant() {
    let config = flotilla_sim::SimConfig::default();
    let mut faults = 0;
    let mut failed_by_losses = 0;
    let mut purged = 0;
    for seed in 0..2_000 {
        match flotilla_sim::run(seed, &config) {
            Ok(r) => {
                faults += r.faults;
                failed_by_losses += r.failed_by_losses;
                purged += r.purged;
            }
            Err(e) => {
                panic!("seed {seed}: {e} (replay: cargo run --release -p flotilla-sim -- --start {seed} --seeds 1)")
            }
        }
    }
    assert!(faults > 10_000, "the simulation injected only {faults} faults");
    assert!(purged > 1_000, "only {purged} finished jobs were purged during faults");
    // Failing a job for repeated worker losses is by design, but must stay rare: more would
    // mean workers are declared lost when they should not be.
    assert!(failed_by_losses <= 10, "{failed_by_losses} jobs of 2,000 seeds failed by worker losses");
}
