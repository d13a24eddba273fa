"""Reading other frameworks' checkpoints: a safe pickle reader, declarative key maps and the
fairseq import (``d2v import --from-fairseq``)."""
