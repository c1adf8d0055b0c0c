//! An IPFS node for the tests (js-ipfs 0.66.1, offline, kubo's RPC API on
//! 127.0.0.1). Not written yet.

pub struct Server {}

impl Server {
    pub fn new_location(&self) -> String {
        unimplemented!()
    }
    pub fn env(&self) -> Vec<(String, String)> {
        unimplemented!()
    }
}

pub fn server() -> Option<&'static Server> {
    eprintln!("!!!!!!!! SKIPPED LOUDLY: the IPFS test node is not written yet !!!!!!!!");
    None
}
