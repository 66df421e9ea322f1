//! `greeter [ADDR]`: run the gRPC Greeter with reflection on its own (default 127.0.0.1:50051).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("Greeter (h2c) listening on {}", listener.local_addr()?);
    wasmgress_examples::greeter::serve(listener, Default::default()).await?;
    Ok(())
}
