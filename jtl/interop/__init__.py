"""Foreign weights into jtl: safe torch/safetensors reading, checked key maps, import to orbax.

- `jtl.interop.torch_pickle`: `read_torch_pickle`, `load_state_dict`, `UnsafePickleError`.
- `jtl.interop.convert`: `convert_state_dict`, `efficientnet_lite0_key_map`, `ConversionError`,
  `find_efficientnet_lite0_weights`.
- `jtl.interop.importer`: `convert_file`, `import_checkpoint`, `build_model`, `IMPORTERS`.
- `jtl.interop.imagenet`: `imagenet_class_names`.

Submodules are imported explicitly (this package imports nothing) so reading a state dict does
not pull in jax/flax.
"""
