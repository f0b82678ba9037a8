package sanity

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// paginationSpecs is csi-sanity's ListVolumes pagination spec, which the
// suite keeps pending (XIt) because index-based pagination cannot pass it
// reliably. This driver's tokens are the last volume ID of a page, so it
// must: volumes deleted or created between pages neither repeat nor
// shift the listing.
func paginationSpecs(cfg *sanity.TestConfig) {
	Describe("ListVolumes pagination [viperblock]", func() {
		var (
			conn *grpc.ClientConn
			cl   csi.ControllerClient
			made []string
		)
		BeforeEach(func() {
			var err error
			conn, err = grpc.NewClient(cfg.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
			Expect(err).NotTo(HaveOccurred())
			cl = csi.NewControllerClient(conn)
			made = nil
		})
		AfterEach(func() {
			for _, id := range made {
				cl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
			}
			conn.Close()
		})
		create := func(name string) string {
			r, err := cl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: sanity.UniqueString(name),
				VolumeCapabilities: []*csi.VolumeCapability{{
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}},
				CapacityRange: &csi.CapacityRange{RequiredBytes: cfg.TestVolumeSize}, Parameters: cfg.TestVolumeParameters})
			Expect(err).NotTo(HaveOccurred())
			made = append(made, r.GetVolume().GetVolumeId())
			return r.GetVolume().GetVolumeId()
		}
		It("should detect volumes added between pages and accept tokens when the last volume from a page is deleted", func() {
			all, err := cl.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
			Expect(err).NotTo(HaveOccurred())
			exist := map[string]bool{}
			for _, e := range all.GetEntries() {
				exist[e.GetVolume().GetVolumeId()] = true
			}
			for i := len(exist); i < 3; i++ {
				exist[create(fmt.Sprintf("pagination-%d", i))] = true
			}
			total := len(exist)
			page, err := cl.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2})
			Expect(err).NotTo(HaveOccurred())
			Expect(page.GetEntries()).To(HaveLen(2))
			Expect(page.GetNextToken()).NotTo(BeEmpty())
			By("deleting the listed volumes")
			for _, e := range page.GetEntries() {
				id := e.GetVolume().GetVolumeId()
				Expect(exist[id]).To(BeTrue())
				_, err := cl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
				Expect(err).NotTo(HaveOccurred())
				delete(exist, id)
			}
			By("creating a new volume")
			exist[create("pagination-new")] = true
			rest, err := cl.ListVolumes(context.Background(), &csi.ListVolumesRequest{StartingToken: page.GetNextToken()})
			Expect(err).NotTo(HaveOccurred())
			Expect(len(rest.GetEntries())).To(BeNumerically("<=", total-2+1))
			seen := map[string]bool{}
			for _, e := range rest.GetEntries() {
				id := e.GetVolume().GetVolumeId()
				Expect(exist[id]).To(BeTrue(), "listed %s, which was deleted or never existed", id)
				Expect(seen[id]).To(BeFalse(), "listed %s twice", id)
				seen[id] = true
			}
			// Every volume that existed throughout and sorts after the
			// token is listed.
			for id := range exist {
				if id > page.GetNextToken() {
					Expect(seen[id]).To(BeTrue(), "missing %s", id)
				}
			}
		})
	})
}
