//! The Rust schedule and respacing equal the Python pipeline's (tests/fixtures/schedule.json) to 1e-9.

mod common;

use dlm::manifest::Manifest;
use dlm::schedule::Diffusion;
use serde_json::Value;

fn assert_close(name: &str, steps: &str, ours: &[f64], theirs: &Value) {
    let theirs: Vec<f64> = serde_json::from_value(theirs.clone()).expect("fixture arrays are numbers");
    assert_eq!(ours.len(), theirs.len(), "{name} at {steps} steps: length");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!((a - b).abs() <= 1e-9, "{name}[{i}] at {steps} steps: rust {a} vs python {b}");
    }
}

#[test]
fn respaced_schedules_match_python() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(common::repo_path("tests/fixtures/schedule.json")).unwrap())
            .unwrap();
    let manifest = Manifest::load(&common::model_dir()).unwrap();
    let budgets = fixture["budgets"].as_object().unwrap();
    assert!(budgets.len() >= 5);
    for (steps, expected) in budgets {
        let d = Diffusion::respaced(&manifest.diffusion, steps.parse().unwrap()).unwrap();
        let map: Vec<f64> = d.timestep_map.iter().map(|&t| t as f64).collect();
        assert_close("timestep_map", steps, &map, &expected["timestep_map"]);
        assert_close("betas", steps, &d.betas, &expected["betas"]);
        assert_close("alpha_bar", steps, &d.alpha_bar, &expected["alpha_bar"]);
        assert_close("posterior_mean_coef1", steps, &d.posterior_mean_coef1, &expected["posterior_mean_coef1"]);
        assert_close("posterior_mean_coef2", steps, &d.posterior_mean_coef2, &expected["posterior_mean_coef2"]);
        assert_close("model_variance", steps, &d.model_variance, &expected["model_variance"]);
    }
}

#[test]
fn full_schedule_matches_the_manifest_table() {
    let manifest = Manifest::load(&common::model_dir()).unwrap();
    let d = Diffusion::respaced(&manifest.diffusion, manifest.diffusion.num_timesteps).unwrap();
    assert_close("alpha_bar", "T", &d.alpha_bar, &serde_json::to_value(&manifest.diffusion.alpha_bar).unwrap());
}
