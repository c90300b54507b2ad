"""Stage 2: restyling fused images after a reference image (IP-Adapter, InstantStyle block scales) with ControlNet."""
