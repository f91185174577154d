//! One thing wrong with a scenario and the field it is about: what every check returns, so an
//! error can point at the line in the file.

/// One thing wrong with a scenario, and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Field path, e.g. `workload.rate_per_s` or `faults[2].groups`.
    pub(crate) field: String,
    /// What is wrong, in one line.
    pub(crate) reason: String,
}

/// `Err(Problem)` about `field`.
pub(crate) fn problem<T>(
    field: impl Into<String>,
    reason: impl Into<String>,
) -> Result<T, Problem> {
    Err(Problem {
        field: field.into(),
        reason: reason.into(),
    })
}
