#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etcd_manager::fuzzing::ec2_xml(data));
