"""Running Envoy and other children: the bootstrap that points Envoy here, the
same resources as a static bootstrap (benchmark baseline), the Envoy process
and child-process supervision."""
