//! Agent → host frames, as the host's reader thread in
//! `crates/vmm/src/guest_link.rs` decodes them: `read_msg::<GuestMsg>` in a loop
//! until the first error, which ends the link. The guest is untrusted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_proto::{encode, read_msg, GuestMsg};
use std::io::{BufReader, Cursor};

fuzz_target!(|data: &[u8]| {
    let mut reader = BufReader::new(Cursor::new(data));
    // Each frame consumes at least its 6-byte header: this loop ends.
    while let Ok(msg) = read_msg::<_, GuestMsg>(&mut reader) {
        // What was decoded can be sent again and reads back the same.
        let frame = encode(&msg).expect("a decoded message re-encodes");
        let back: GuestMsg = read_msg(&mut Cursor::new(frame)).expect("and decodes");
        assert_eq!(back, msg);
    }
});
