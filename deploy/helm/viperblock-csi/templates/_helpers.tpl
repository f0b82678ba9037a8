{{/* Labels on every object: the kustomize base's part-of, plus Helm's. */}}
{{- define "viperblock.labels" -}}
app.kubernetes.io/part-of: viperblock-csi
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "viperblock.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pod-level annotation that rolls the pods when the config changes. */}}
{{- define "viperblock.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* A sidecar's securityContext: the same for every sidecar. */}}
{{- define "viperblock.sidecarSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* POD_NAMESPACE from the downward API. */}}
{{- define "viperblock.podNamespaceEnv" -}}
env:
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
{{- end -}}

{{/*
viperblock.bytes: a size as the driver reads it (pkg/units: a whole number
and an optional unit; K, Ki, KiB and the like are powers of 1024, KB, MB,
GB, TB powers of 1000, case-insensitive) in bytes, as a decimal string.
Called with (list "value.name" value); a size the chart cannot read fails
the rendering, naming the value. Fractions ("1.5GiB") are refused: write
1536MiB.
*/}}
{{- define "viperblock.bytes" -}}
{{- $name := index . 0 -}}
{{- $v := index . 1 -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v = int64 $v | toString -}}
{{- end -}}
{{- $s := toString $v | trim -}}
{{- if not (regexMatch "^[0-9]+ ?[A-Za-z]*$" $s) -}}
{{- fail (printf "%s=%q: want a whole number of bytes with an optional unit, e.g. 2GiB or 1536MiB" $name $s) -}}
{{- end -}}
{{- /* no leading zeros: int64 would read them as octal */ -}}
{{- $num := regexReplaceAll "^0+([0-9])" (regexFind "^[0-9]+" $s) "${1}" | int64 -}}
{{- $unit := regexReplaceAll "^[0-9]+ ?" $s "" | lower -}}
{{- $k := 1024 -}}
{{- $mult := dict "" 1 "b" 1
  "k" $k "ki" $k "kib" $k
  "m" (mul $k $k) "mi" (mul $k $k) "mib" (mul $k $k)
  "g" (mul $k $k $k) "gi" (mul $k $k $k) "gib" (mul $k $k $k)
  "t" (mul $k $k $k $k) "ti" (mul $k $k $k $k) "tib" (mul $k $k $k $k)
  "kb" 1000 "mb" 1000000 "gb" 1000000000 "tb" 1000000000000 -}}
{{- if not (hasKey $mult $unit) -}}
{{- fail (printf "%s=%q: unknown unit %q (use KiB, MiB, GiB, TiB or KB, MB, GB, TB)" $name $s $unit) -}}
{{- end -}}
{{- mul $num (get $mult $unit) -}}
{{- end -}}

{{/*
viperblock.quantity: bytes (an integer) as a Kubernetes quantity, in the
largest of Mi, Ki and bytes that divides it.
*/}}
{{- define "viperblock.quantity" -}}
{{- $b := int64 . -}}
{{- if eq (mod $b 1048576) 0 -}}{{ div $b 1048576 }}Mi
{{- else if eq (mod $b 1024) 0 -}}{{ div $b 1024 }}Ki
{{- else -}}{{ $b }}
{{- end -}}
{{- end -}}

{{/*
viperblock.memoryBudget: node.memoryBudget as given (the driver reads it),
a number as its decimal digits; "" when unset. Refuses a budget the node
plugin would refuse at start-up: smaller than one volume's share (96 MiB),
or, with node.maxVolumesPerNode, a share below it.
*/}}
{{- define "viperblock.memoryBudget" -}}
{{- $v := .Values.node.memoryBudget -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v = int64 $v | toString -}}
{{- end -}}
{{- $v = toString (default "" $v) | trim -}}
{{- if $v -}}
{{- $b := include "viperblock.bytes" (list "node.memoryBudget" $v) | int64 -}}
{{- $volume := 100663296 -}}
{{- if lt $b $volume -}}
{{- fail (printf "node.memoryBudget=%s is smaller than one volume's share, 96MiB" $v) -}}
{{- end -}}
{{- with .Values.node.maxVolumesPerNode -}}
{{- if lt (div $b (int64 .)) $volume -}}
{{- fail (printf "node.memoryBudget=%s over node.maxVolumesPerNode=%d leaves each volume less than 96MiB: lower maxVolumesPerNode or raise the budget" $v (int64 .)) -}}
{{- end -}}
{{- end -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/*
viperblock.nodeResources: the node container's resources. Memory request
and limit: node.memoryBudget + node.memoryOverhead (the servers' memory is
charged to the host cgroup, not to the container: the request reserves it
on the node for the scheduler, the limit bounds the plugin), or the
overhead alone without a budget. node.resources is laid over that: what it
sets wins.
*/}}
{{- define "viperblock.nodeResources" -}}
{{- $budget := include "viperblock.memoryBudget" . -}}
{{- $mem := include "viperblock.bytes" (list "node.memoryOverhead" .Values.node.memoryOverhead) | int64 -}}
{{- if $budget -}}
{{- $mem = add $mem (include "viperblock.bytes" (list "node.memoryBudget" $budget) | int64) -}}
{{- end -}}
{{- $q := include "viperblock.quantity" $mem -}}
{{- $derived := dict "requests" (dict "memory" $q) "limits" (dict "memory" $q) -}}
{{- toYaml (mergeOverwrite $derived (deepCopy (default dict .Values.node.resources))) -}}
{{- end -}}

{{/*
viperblock.logFormat: a component's logFormat (--logging-format), checked;
"" when unset (the driver's default, text). Called with (list "component"
value).
*/}}
{{- define "viperblock.logFormat" -}}
{{- $name := index . 0 -}}
{{- with index . 1 -}}
{{- if not (has . (list "text" "json")) -}}
{{- fail (printf "%s.logFormat=%q: want text or json" $name .) -}}
{{- end -}}
{{- . -}}
{{- end -}}
{{- end -}}
