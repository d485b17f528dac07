//! The config parser and validator, as `ringlb check` runs it (without resolving host names),
//! on arbitrary text: it returns a config or an error, never panics. A config it accepts is
//! summarized too (the summary `ringlb check` prints).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ringlb::config::Config::parse_offline(text, "<fuzz>") {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
