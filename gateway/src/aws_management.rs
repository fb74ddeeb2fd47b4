//! The AWS API Gateway management API (`@connections`) on the send-back listener:
//! `POST|GET|DELETE /{stage}/@connections/{id}`, authenticated by SigV4 signatures made
//! with the access keys in `aws.credentials`, answering with AWS's statuses and error
//! shapes, so that an AWS SDK client pointed at the gateway works unchanged.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::Shared;
use crate::respond::{self, Body};

/// Serves one management API request for connection `id`.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>, id: &str) -> Response<Body> {
    let _ = (shared, req, id);
    respond::error(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "the AWS management API is not available yet",
    )
}
