//! [`Message`]: one WebSocket data message, text or binary, as handlers receive and return
//! it and as the send-back client sends it. In event and batch JSON a message travels as
//! `data` + `dataType`, binary as standard padded base64; this module converts both ways.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::error::FunctionsError;
use crate::event::DataType;

/// The content type the gateway reads as "send a binary frame".
pub const BINARY_CONTENT_TYPE: &str = "application/octet-stream";
/// The content type used for text frames.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// One WebSocket data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Message::Binary(bytes.into())
    }

    /// Decodes an event's `data` by its `dataType`: text as is, binary from base64.
    pub fn from_data(data_type: DataType, data: &str) -> Result<Self, FunctionsError> {
        match data_type {
            DataType::Text => Ok(Message::Text(data.to_owned())),
            DataType::Binary => Ok(Message::Binary(BASE64.decode(data)?.into())),
        }
    }

    /// Encodes it as `dataType` and `data`: text as is, binary as base64.
    pub fn to_data(&self) -> (DataType, String) {
        match self {
            Message::Text(text) => (DataType::Text, text.clone()),
            Message::Binary(bytes) => (DataType::Binary, BASE64.encode(bytes)),
        }
    }

    /// The text, if it is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        }
    }

    /// Whether it is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The content type that carries it over HTTP: [`BINARY_CONTENT_TYPE`] for binary,
    /// [`TEXT_CONTENT_TYPE`] for text.
    pub fn content_type(&self) -> &'static str {
        match self {
            Message::Text(_) => TEXT_CONTENT_TYPE,
            Message::Binary(_) => BINARY_CONTENT_TYPE,
        }
    }

    /// The payload bytes (UTF-8 for text).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(bytes) => bytes,
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::Binary(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_data_is_taken_as_is() {
        let msg = Message::from_data(DataType::Text, "héllo AAE=").unwrap();
        assert_eq!(msg, Message::text("héllo AAE="));
        assert_eq!(msg.content_type(), TEXT_CONTENT_TYPE);
    }

    #[test]
    fn binary_data_is_base64_decoded() {
        let msg = Message::from_data(DataType::Binary, "AAH/").unwrap();
        assert_eq!(msg, Message::binary(vec![0u8, 1, 255]));
        assert!(msg.is_binary());
        assert_eq!(msg.content_type(), BINARY_CONTENT_TYPE);
        assert_eq!(
            Message::from_data(DataType::Binary, "").unwrap(),
            Message::binary(Vec::new())
        );
    }

    #[test]
    fn invalid_base64_is_an_error() {
        let err = Message::from_data(DataType::Binary, "not base64!").unwrap_err();
        assert!(matches!(err, FunctionsError::InvalidData(_)), "{err:?}");
        // Unpadded input is refused: the contract says padded.
        assert!(Message::from_data(DataType::Binary, "AAE").is_err());
    }

    #[test]
    fn to_data_round_trips() {
        for msg in [Message::text("hi"), Message::binary(vec![0u8, 1, 2, 254])] {
            let (data_type, data) = msg.to_data();
            assert_eq!(Message::from_data(data_type, &data).unwrap(), msg);
        }
        assert_eq!(
            Message::binary(vec![0u8, 1]).to_data(),
            (DataType::Binary, "AAE=".to_owned())
        );
    }
}
