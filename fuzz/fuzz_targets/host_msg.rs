//! Host → agent frames, as the guest agent decodes them. The agent
//! (`images/agent`) is a binary with no library to link, so this calls what
//! its loop in `images/agent/src/session.rs` calls on the channel:
//! `sd_proto::read_msg::<HostMsg>`, here over a byte cursor. On any error
//! but `Closed` the agent drops the session and drains the channel, so a
//! bad frame wedges it only if `read_msg` panics, loops or waits for bytes
//! beyond the frame: a finite input must always give a result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_proto::{encode, read_msg, HostMsg, ProtoError};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut reader = Cursor::new(data);
    loop {
        match read_msg::<_, HostMsg>(&mut reader) {
            Ok(msg) => {
                let frame = encode(&msg).expect("a decoded message re-encodes");
                let back: HostMsg = read_msg(&mut Cursor::new(frame)).expect("and decodes");
                assert_eq!(back, msg);
            }
            // The end of the input, reached only between two frames.
            Err(ProtoError::Closed) => {
                assert_eq!(reader.position() as usize, data.len());
                break;
            }
            Err(_) => break,
        }
    }
});
