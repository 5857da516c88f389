use aya::{EbpfLoader, programs::CgroupSkb};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let mut ebpf = EbpfLoader::new().load_file(&path).expect("load object");
    for name in ["h2v_ingress", "h2v_egress", "h2v_release"] {
        let prog: &mut CgroupSkb = ebpf.program_mut(name).unwrap().try_into().unwrap();
        match prog.load() {
            Ok(()) => {
                let n = prog
                    .info()
                    .ok()
                    .and_then(|i| i.verified_instruction_count());
                println!("{name}: loaded, {n:?} instructions verified");
            }
            Err(e) => {
                let mut s = format!("{e:#?}");
                if s.len() > 6000 {
                    s = s[s.len() - 6000..].to_string();
                }
                println!("{name}: FAILED {s}");
            }
        }
    }
}
