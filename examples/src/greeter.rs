//! The seed article's gRPC Greeter (tonic), with server reflection (v1alpha, as grpcurl lists
//! it) and one method of each call kind.
//!
//! Request metadata whose key starts with `x-` is echoed back as response metadata, so tests
//! can check that custom and `-bin` metadata cross the proxy. A request named `fail` ends with
//! a FAILED_PRECONDITION status carrying the echoed metadata as trailers. Calls that end because
//! the client went away are counted in [`Observed`], so tests can see cancellation propagate.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

pub mod proto {
    tonic::include_proto!("helloworld");

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("helloworld_descriptor");
}

use proto::greeter_server::{Greeter as GreeterService, GreeterServer};
use proto::{HelloReply, HelloRequest};

/// What the server saw, for tests.
#[derive(Debug, Default)]
pub struct Observed {
    /// Calls that ended because the client cancelled or went away.
    pub cancelled: AtomicU64,
    pub changed: Notify,
}

/// The Greeter service.
#[derive(Debug, Clone, Default)]
pub struct Greeter {
    pub observed: Arc<Observed>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

/// Serves the Greeter and reflection on `listener` (h2c) until the task is dropped.
pub async fn serve(listener: TcpListener, greeter: Greeter) -> Result<(), tonic::transport::Error> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor set is valid");
    tonic::transport::Server::builder()
        .add_service(
            GreeterServer::new(greeter)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(reflection)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

fn echoed(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for kv in metadata.iter() {
        match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-") => {
                out.insert(k.clone(), v.clone());
            }
            tonic::metadata::KeyAndValueRef::Binary(k, v) if k.as_str().starts_with("x-") => {
                out.insert_bin(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    out
}

fn reply(req: &HelloRequest, n: u32) -> HelloReply {
    HelloReply {
        message: if n == 0 {
            format!("Hello {}", req.name)
        } else {
            format!("Hello {} #{n}", req.name)
        },
        payload: req.payload.clone(),
    }
}

impl Greeter {
    fn cancelled(&self) {
        self.observed.cancelled.fetch_add(1, Ordering::SeqCst);
        self.observed.changed.notify_waiters();
    }
}

#[tonic::async_trait]
impl GreeterService for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let metadata = echoed(request.metadata());
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
        }
        if req.name == "fail" {
            return Err(Status::with_metadata(
                tonic::Code::FailedPrecondition,
                "failing as asked",
                metadata,
            ));
        }
        let mut resp = Response::new(reply(&req, 0));
        *resp.metadata_mut() = metadata;
        Ok(resp)
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            for n in 1..=req.count {
                if req.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
                }
                if tx.send(Ok(reply(&req, n))).await.is_err() {
                    me.cancelled();
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn collect_hellos(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let mut stream = request.into_inner();
        let (mut count, mut bytes) = (0u64, 0usize);
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(m) => {
                    count += 1;
                    bytes += m.payload.len();
                }
                Err(e) => {
                    self.cancelled();
                    return Err(e);
                }
            }
        }
        Ok(Response::new(HelloReply {
            message: format!("received {count} hellos, {bytes} payload bytes"),
            payload: Vec::new(),
        }))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                match inbound.next().await {
                    Some(Ok(req)) => {
                        n += 1;
                        if tx.send(Ok(reply(&req, n))).await.is_err() {
                            me.cancelled();
                            return;
                        }
                    }
                    Some(Err(_)) => {
                        me.cancelled();
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
