"""Workers: ``dft`` (reference labels), ``mlmd`` (ML molecular dynamics), ``trainer`` (fitting)."""
