//! Thousands of seeded simulations per CI run: every invariant after every step, every job
//! finished with the right outputs at the end, the log replaying to the same state.

#[test]
fn two_thousand_seeds_keep_every_invariant() {
    let config = flotilla_sim::SimConfig::default();
    let mut faults = 0;
    for seed in 0..2_000 {
        match flotilla_sim::run(seed, &config) {
            Ok(r) => faults += r.faults,
            Err(e) => {
                panic!("seed {seed}: {e} (replay: cargo run --release -p flotilla-sim -- --start {seed} --seeds 1)")
            }
        }
    }
    assert!(faults > 10_000, "the simulation injected only {faults} faults");
}
