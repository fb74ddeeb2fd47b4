//! Server frames encoded once: a message the send-back API delivers is turned into its
//! WebSocket frame (header + payload, unmasked, as a server sends it) a single time, and
//! every member of a group send queues the same shared bytes. Nothing is encoded or copied
//! per member.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// One encoded data frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame's bytes as they go on the wire.
    pub bytes: Bytes,
    /// The payload's length (what the metrics count as bytes out).
    pub payload_len: usize,
}

impl Frame {
    /// The final, unmasked frame of `message`: a text frame for text, else a binary one
    /// (the send-back API makes nothing but text and binary messages).
    pub fn of(message: &Message) -> Frame {
        let (opcode, payload): (Data, &[u8]) = match message {
            Message::Text(text) => (Data::Text, text.as_bytes()),
            Message::Binary(bytes) => (Data::Binary, bytes),
            Message::Ping(bytes) | Message::Pong(bytes) => (Data::Binary, bytes),
            Message::Close(_) | Message::Frame(_) => (Data::Binary, &[]),
        };
        let header = FrameHeader {
            opcode: OpCode::Data(opcode),
            ..FrameHeader::default()
        };
        let len = payload.len() as u64;
        let mut out = Vec::with_capacity(header.len(len) + payload.len());
        // Into a Vec: the write cannot fail, and a header is all or nothing.
        let _ = header.format(len, &mut out);
        out.extend_from_slice(payload);
        Frame {
            bytes: Bytes::from(out),
            payload_len: payload.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

    /// Parses `bytes` as tungstenite reads a frame.
    fn parse(bytes: &[u8]) -> WsFrame {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(start + len as usize, bytes.len(), "one whole frame");
        WsFrame::from_payload(header, Bytes::copy_from_slice(&bytes[start..]))
    }

    #[test]
    fn text_and_binary_frames_of_every_length_class_read_back() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let frame = Frame::of(&Message::text(text.clone()));
            assert_eq!(frame.payload_len, len);
            let read = parse(&frame.bytes);
            assert!(read.header().is_final);
            assert_eq!(read.header().opcode, OpCode::Data(Data::Text));
            assert!(read.header().mask.is_none(), "a server frame is not masked");
            assert_eq!(read.payload(), text.as_bytes());

            let bin: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = Frame::of(&Message::binary(bin.clone()));
            let read = parse(&frame.bytes);
            assert_eq!(read.header().opcode, OpCode::Data(Data::Binary));
            assert_eq!(read.payload(), &bin[..]);
        }
    }
}
