//! Reading exports. One module per input format; CSV is the only one so far.

pub mod csv;
