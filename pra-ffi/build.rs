//! The shared library's soname: `libpra.so.0.1` while the version is 0.x (a 0.x minor release
//! may change the ABI, as cargo-c numbers it), `libpra.so.MAJOR` from 1.0 on — whatever cargo
//! calls its output (`libpra_ffi.so`; `make libpra` and `make install` give it the versioned
//! names `libpra.so.0.1.0`, `libpra.so.0.1`, `libpra.so`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
        let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
        let soversion = if major == "0" {
            format!("0.{minor}")
        } else {
            major
        };
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpra.so.{soversion}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
