//! The PROXY header parser as ringlb reads a client's header, on arbitrary bytes: it never
//! panics, a complete header's length is within the input and the limits, an incomplete one
//! is within the limits, and a header ringlb builds from the addresses parsed reads back to
//! the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::proxyproto::{MAX_HEADER_LEN, Parse, build_header, parse_header};

fuzz_target!(|data: &[u8]| {
    match parse_header(data) {
        Ok(Parse::Complete(parsed)) => {
            assert!(parsed.len <= data.len() && parsed.len <= MAX_HEADER_LEN);
            // The same header without what follows it parses the same.
            assert_eq!(parse_header(&data[..parsed.len]), Ok(Parse::Complete(parsed)));
            if let Some((client, service)) = parsed.addresses {
                let built = build_header(parsed.version, client, service);
                let Ok(Parse::Complete(again)) = parse_header(&built) else {
                    panic!("a built header does not parse: {built:?}");
                };
                let canonical = |s: std::net::SocketAddr| {
                    std::net::SocketAddr::new(s.ip().to_canonical(), s.port())
                };
                let (c, s) = again.addresses.expect("addresses");
                if client.is_ipv4() == service.is_ipv4() {
                    assert_eq!((canonical(c), canonical(s)), (canonical(client), canonical(service)));
                }
            }
        }
        Ok(Parse::Incomplete) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
});
