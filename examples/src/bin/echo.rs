//! `echo [ADDR] [NAME]`: run the echo backend on its own (default 127.0.0.1:9000, name "echo").

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let name = args.next().unwrap_or_else(|| "echo".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "echo backend {name:?} listening on {}",
        listener.local_addr()?
    );
    wasmgress_examples::echo::serve(listener, name).await;
    Ok(())
}
