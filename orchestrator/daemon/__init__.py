"""The daemon: wiring and supervision (``main``), the per-service control loop
(``controller``) and the interface its front doors use (``control``), the MQTT event stream
(``events``), the metrics exporter, systemd notification and the audit writer."""
