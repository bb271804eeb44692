# terraform apply -var-file=example.tfvars
etcd_cluster_name = "main"
backup_store      = "s3://example-etcd-backups/cluster.example.com/backups/etcd/main"
s3_region         = "eu-west-1"
masters = [
  { name = "master-1", address = "10.0.1.10" },
  { name = "master-2", address = "10.0.2.10" },
  { name = "master-3", address = "10.0.3.10" },
]
