//! `collector`: the HTTP beacon collector.

fn main() {
    println!("collector");
}
