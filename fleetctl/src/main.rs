mod table;

fn main() {}
