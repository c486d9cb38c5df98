//! The one reader of a benchmark's command line (`ci/bench.sh NAME
//! [args]`): `--name VALUE` pairs anywhere after the program name, read by
//! name. A malformed value panics with the option's name: a usage error
//! stops the run before anything is started.

/// The arguments a benchmark was started with.
pub struct Args(Vec<String>);

impl Args {
    /// This process's arguments.
    pub fn from_env() -> Self {
        Args(std::env::args().skip(1).collect())
    }

    /// Whether the bare flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|arg| arg == name)
    }

    /// The text after `name` ("" when `name` ends the line), if given.
    pub fn text(&self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|arg| arg == name)?;
        Some(self.0.get(at + 1).cloned().unwrap_or_default())
    }

    /// `name`'s value, a positive integer (or 0 too, with `zero_ok`).
    ///
    /// # Panics
    /// On any other value.
    pub fn number(&self, name: &str, zero_ok: bool) -> Option<u64> {
        let text = self.text(name)?;
        match text.parse::<u64>() {
            Ok(n) if n > 0 || zero_ok => Some(n),
            _ if zero_ok => panic!("{name} needs a non-negative integer, got {text:?}"),
            _ => panic!("{name} needs a positive integer, got {text:?}"),
        }
    }

    /// As [`Args::number`], as a count.
    pub fn count(&self, name: &str, zero_ok: bool) -> Option<usize> {
        self.number(name, zero_ok)
            .map(|n| usize::try_from(n).unwrap_or_else(|_| panic!("{name} {n} is too large")))
    }

    /// `name`'s value, a number from 0 to 1.
    ///
    /// # Panics
    /// On any other value.
    pub fn fraction(&self, name: &str) -> Option<f64> {
        let text = self.text(name)?;
        match text.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Some(f),
            _ => panic!("{name} needs a number from 0 to 1, got {text:?}"),
        }
    }
}
