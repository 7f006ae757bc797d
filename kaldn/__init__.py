"""kaldn: lightweight super-resolution with depthwise convolutions (DSConv, linear DSConv, KDSConv)."""
