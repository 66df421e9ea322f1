//! `ws-echo [ADDR]`: run the WebSocket echo backend on its own (default 127.0.0.1:9001).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("WebSocket echo listening on {}", listener.local_addr()?);
    wasmgress_examples::ws_echo::serve(listener).await;
    Ok(())
}
