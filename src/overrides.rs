//! Guidance parameters a request overrides, for every control ("0.3") or for one
//! ("content=0.3"), over the manifest's per-control defaults.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::ControlError;
use crate::manifest::GuidanceDefaults;
use crate::sampler::GuideOptions;

/// One overridable parameter: a value for all controls and/or values for named controls.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T> {
    pub all: Option<T>,
    pub per_control: BTreeMap<String, T>,
}

impl<T> Default for Setting<T> {
    fn default() -> Self {
        Self { all: None, per_control: BTreeMap::new() }
    }
}

impl<T: FromStr + Copy> Setting<T> {
    /// From flag values, each `VALUE` or `CONTROL=VALUE`; `range` checks a value.
    pub fn parse(flag: &'static str, values: &[String], range: Range<T>) -> Result<Self, ControlError> {
        let mut setting = Self::default();
        for raw in values {
            let bad = || ControlError::BadOverride { flag, value: raw.clone(), allowed: range.allowed };
            let (control, value) = match raw.split_once('=') {
                Some((c, v)) => (Some(c.trim()), v.trim()),
                None => (None, raw.trim()),
            };
            let value: T = value.parse().map_err(|_| bad())?;
            if !(range.valid)(value) {
                return Err(bad());
            }
            match control {
                Some(c) => setting.per_control.insert(c.to_string(), value),
                None => setting.all.replace(value),
            };
        }
        Ok(setting)
    }
}

impl<T: Copy> Setting<T> {
    pub fn get(&self, control: &str) -> Option<T> {
        self.per_control.get(control).copied().or(self.all)
    }

    /// From a request's JSON: a number for all controls, or an object of control -> number.
    pub fn from_json(flag: &'static str, value: Option<NumberOrMap<T>>, range: Range<T>) -> Result<Self, ControlError>
    where
        T: std::fmt::Display,
    {
        let setting = match value {
            None => Self::default(),
            Some(NumberOrMap::All(v)) => Self { all: Some(v), per_control: BTreeMap::new() },
            Some(NumberOrMap::PerControl(map)) => Self { all: None, per_control: map },
        };
        let values = setting.all.iter().chain(setting.per_control.values());
        match values.copied().find(|v| !(range.valid)(*v)) {
            Some(v) => Err(ControlError::BadOverride { flag, value: v.to_string(), allowed: range.allowed }),
            None => Ok(setting),
        }
    }
}

/// A guidance parameter in a JSON request: `0.3` or `{"content": 0.3}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum NumberOrMap<T> {
    All(T),
    PerControl(BTreeMap<String, T>),
}

/// Overrides of the manifest's guidance defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuideOverrides {
    /// K, gradient steps per diffusion step.
    pub steps: Setting<usize>,
    /// Fluency weight lambda of ||x - mu||^2 / sigma^2.
    pub lambda: Setting<f64>,
    /// Step size.
    pub lr: Setting<f64>,
    /// Weight of a control's loss in the sum (default 1).
    pub weight: Setting<f64>,
}

/// What values a guidance parameter takes, and how an error says so.
#[derive(Clone, Copy)]
pub struct Range<T> {
    pub valid: fn(T) -> bool,
    pub allowed: &'static str,
}

/// K: at most 100 gradient steps per diffusion step.
pub const STEPS: Range<usize> = Range { valid: |k| k <= 100, allowed: "an integer in 0..=100" };
/// Step size: the paper uses 0.05 to 0.15.
pub const LR: Range<f64> =
    Range { valid: |x| x.is_finite() && (0.0..=10.0).contains(&x), allowed: "a number in [0, 10]" };
/// lambda and the loss weights.
pub const WEIGHT: Range<f64> =
    Range { valid: |x| x.is_finite() && (0.0..=1e4).contains(&x), allowed: "a number in [0, 10000]" };

impl GuideOverrides {
    /// Each per-control override must name a guided control of the request.
    pub fn check(&self, guided: &[&str]) -> Result<(), ControlError> {
        let flags: [(&'static str, Vec<&String>); 4] = [
            ("guide steps", self.steps.per_control.keys().collect()),
            ("guide lambda", self.lambda.per_control.keys().collect()),
            ("guide lr", self.lr.per_control.keys().collect()),
            ("guide weight", self.weight.per_control.keys().collect()),
        ];
        for (flag, names) in flags {
            if let Some(name) = names.into_iter().find(|n| !guided.contains(&n.as_str())) {
                return Err(ControlError::OverrideUnused {
                    flag,
                    control: name.clone(),
                    guided: if guided.is_empty() { "none".into() } else { guided.join(", ") },
                });
            }
        }
        Ok(())
    }

    /// The sampler's parameters for these controls: each control's default unless overridden,
    /// combined over controls as the most steps, the smallest lambda and the largest lr.
    pub fn options(&self, defaults: &[(&str, GuidanceDefaults)]) -> GuideOptions {
        let steps = defaults.iter().map(|(c, d)| self.steps.get(c).unwrap_or(d.steps)).max().unwrap_or(0);
        let lambda = defaults.iter().map(|(c, d)| self.lambda.get(c).unwrap_or(d.lambda)).fold(f64::INFINITY, f64::min);
        let lr = defaults.iter().map(|(c, d)| self.lr.get(c).unwrap_or(d.lr)).fold(0.0, f64::max);
        GuideOptions { steps, lambda: if lambda.is_finite() { lambda } else { 0.0 }, lr, ..GuideOptions::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(steps: usize, lambda: f64, lr: f64) -> GuidanceDefaults {
        GuidanceDefaults { steps, lambda, lr }
    }

    #[test]
    fn per_control_values_beat_the_all_value_and_the_defaults() {
        let values = ["0.2".to_string(), "content=0.5".to_string()];
        let lr = Setting::<f64>::parse("--guide-lr", &values, LR).unwrap();
        assert_eq!((lr.get("content"), lr.get("pos")), (Some(0.5), Some(0.2)));
        let o = GuideOverrides { lr, ..Default::default() };
        let opts = o.options(&[("pos", d(3, 0.0005, 0.05)), ("content", d(3, 0.01, 0.1))]);
        assert_eq!((opts.steps, opts.lambda, opts.lr), (3, 0.0005, 0.5));
        let only_pos = GuideOverrides {
            steps: Setting::parse("--guide-steps", &["pos=5".into()], STEPS).unwrap(),
            ..Default::default()
        };
        let opts = only_pos.options(&[("pos", d(3, 0.0005, 0.05)), ("content", d(2, 0.01, 0.1))]);
        assert_eq!((opts.steps, opts.lambda, opts.lr), (5, 0.0005, 0.1));
    }

    #[test]
    fn bad_values_and_unused_controls_are_errors() {
        let bad = |v: &str| Setting::<f64>::parse("--guide-lr", &[v.to_string()], LR).unwrap_err();
        assert!(bad("fast").to_string().contains("--guide-lr"));
        assert!(bad("-1").to_string().contains("CONTROL=VALUE"));
        assert!(bad("1e308").to_string().contains("[0, 10]"));
        assert!(Setting::<usize>::parse("--guide-steps", &["1000".into()], STEPS).is_err());
        let o = GuideOverrides {
            lr: Setting::parse("--guide-lr", &["spans=0.1".into()], LR).unwrap(),
            ..Default::default()
        };
        let e = o.check(&["pos"]).unwrap_err().to_string();
        assert!(e.contains("spans") && e.contains("pos"), "{e}");
        assert!(o.check(&["pos", "spans"]).is_ok());
    }
}
