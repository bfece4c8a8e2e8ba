//! How an event the core names (`EventNote::type_`, `warmup::event`, `Release::event`) is
//! recorded and logged: a Warning, or Normal.

/// An event's type, as Kubernetes Events have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Normal,
    Warning,
}

impl Severity {
    /// The severity of an event the core typed `type_`. Only "Warning" warns: an unknown type
    /// records as Normal, as the API server's default does.
    pub fn of(type_: &str) -> Self {
        if type_ == Self::Warning.as_str() {
            Self::Warning
        } else {
            Self::Normal
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_warns_and_everything_else_is_normal() {
        assert_eq!(Severity::of("Warning"), Severity::Warning);
        assert_eq!(Severity::of("Normal"), Severity::Normal);
        for other in ["", "warning", "WARNING", "Warn", "Error", " Warning"] {
            assert_eq!(Severity::of(other), Severity::Normal, "{other:?}");
        }
    }

    #[test]
    fn a_severity_reads_back_as_its_name() {
        for severity in [Severity::Normal, Severity::Warning] {
            assert_eq!(Severity::of(severity.as_str()), severity);
        }
    }
}
