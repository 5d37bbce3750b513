//! Which ONNX Runtime libraries dlm loads: version 1.x at least as new as the C API `ort` was
//! built for (its `api-22` feature: 1.22), read from the library before `ort` asks it for that
//! API. Tested with [`TESTED`], the CPU wheel scripts/fetch_ort.py pins; any other loadable
//! version runs with a warning.

use std::ffi::{c_char, CStr};
use std::path::Path;

use crate::error::LoadError;

/// The version the tests ran on (scripts/fetch_ort.py's pin, read by build.rs).
pub const TESTED: &str = env!("DLM_ORT_VERSION");

/// The oldest minor version of 1.x that loads: the C API version `ort` asks for.
pub const OLDEST_MINOR: u32 = ort::MINOR_VERSION;

/// MAJOR.MINOR.PATCH, as `OrtGetApiBase()->GetVersionString()` reports it ("1.32.0"; a
/// pre-release or build suffix after '-' or '+' is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next().unwrap_or(Some(0))?);
        parts.next().is_none().then_some(Self { major, minor, patch })
    }
}

/// How a library's version stands: refused (the error names it and what loads), or loadable
/// and whether it is the tested minor version.
pub fn check(path: &Path, found: &str) -> Result<bool, LoadError> {
    let refuse = || LoadError::OrtVersion {
        path: path.to_path_buf(),
        found: found.to_string(),
        oldest: format!("1.{OLDEST_MINOR}"),
        tested: TESTED,
    };
    let version = Version::parse(found).ok_or_else(refuse)?;
    if version.major != 1 || version.minor < OLDEST_MINOR {
        return Err(refuse());
    }
    let tested = Version::parse(TESTED).is_some_and(|t| (t.major, t.minor) == (version.major, version.minor));
    Ok(tested)
}

/// The version string of the ONNX Runtime library at `path`, from its `OrtGetApiBase` (the one
/// entry point every version exports), without asking for any C API version.
pub fn library_version(path: &Path) -> Result<String, LoadError> {
    let bad = |why: String| LoadError::OrtLibrary(format!("{}: {why}", path.display()));
    // SAFETY: loading runs the library's initialisers, as ort's own load of the same file
    // would; check_library_file has already refused truncated and non-ELF files.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| bad(format!("cannot load it: {e}")))?;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release.
    let base_of = unsafe { library.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase") }
        .map_err(|_| bad("no OrtGetApiBase: not an ONNX Runtime library".into()))?;
    // SAFETY: the base is static data of the library, valid while it is loaded.
    let base = unsafe { base_of() };
    if base.is_null() {
        return Err(bad("OrtGetApiBase returned nothing".into()));
    }
    // SAFETY: GetVersionString returns a static NUL-terminated string.
    let text: *const c_char = unsafe { ((*base).GetVersionString)() };
    if text.is_null() {
        return Err(bad("no version string".into()));
    }
    Ok(unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_or_without_a_suffix_and_garbage_does_not() {
        let v = |major, minor, patch| Some(Version { major, minor, patch });
        assert_eq!(Version::parse("1.32.0"), v(1, 32, 0));
        assert_eq!(Version::parse("1.22.2-dev"), v(1, 22, 2));
        assert_eq!(Version::parse("1.23.0+jetson"), v(1, 23, 0));
        assert_eq!(Version::parse("1.22"), v(1, 22, 0));
        for bad in ["", "1", "one.22.0", "1..0", "1.22.0.4", "1.-2.0"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn too_old_or_other_major_versions_are_refused_naming_both_versions() {
        let path = Path::new("/opt/ort/libonnxruntime.so");
        assert_eq!(OLDEST_MINOR, 22, "the api-22 feature of ort in Cargo.toml");
        for old in ["1.21.1", "1.16.3", "0.99.0", "2.0.0", "garbage"] {
            let e = check(path, old).unwrap_err().to_string();
            assert!(e.contains(old) && e.contains("1.22") && e.contains(TESTED), "{old}: {e}");
            assert!(e.contains("/opt/ort/libonnxruntime.so"), "{e}");
        }
        assert!(check(path, "1.22.0").is_ok_and(|tested| !tested), "the oldest that loads, untested");
        assert!(check(path, "1.40.0").is_ok_and(|tested| !tested), "newer, untested");
        assert!(check(path, TESTED).is_ok_and(|tested| tested));
        let patch = Version::parse(TESTED).map(|t| format!("{}.{}.{}", t.major, t.minor, t.patch + 1)).unwrap();
        assert!(check(path, &patch).is_ok_and(|tested| tested), "another patch release of the tested minor");
    }
}
